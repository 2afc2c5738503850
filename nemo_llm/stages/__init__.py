"""The stage registry: conf/config.yaml's `stages:` names these, and each has a conf/<name>/ folder."""

from nemo_llm.stages.auto_configurator import AutoConfiguratorStage
from nemo_llm.stages.base import Stage
from nemo_llm.stages.conversion import ConversionStage
from nemo_llm.stages.data_preparation import DataPreparationStage
from nemo_llm.stages.evaluation import EvaluationStage
from nemo_llm.stages.inference import InferenceStage
from nemo_llm.stages.prompt_learning import PromptLearningStage
from nemo_llm.stages.training import TrainingStage

STAGES: dict[str, Stage] = {stage.name: stage for stage in (DataPreparationStage(), TrainingStage(), EvaluationStage(),
                                                             InferenceStage(), ConversionStage(),
                                                             PromptLearningStage(), AutoConfiguratorStage())}

__all__ = ["STAGES", "Stage"]

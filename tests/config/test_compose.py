import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from nemo_llm.config import compose, select_preset, validate
from tests.conftest import PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates(preset):
    cfg = compose([f"+model={preset}"])
    assert cfg.model.name == preset
    assert cfg.run_dir == f"results/{preset}"
    validate(cfg)


def test_presets_cover_the_documented_sizes():
    expected = {"gpt_tiny", "gpt_126m", "gpt_400m", "gpt_1.3b", "gpt_5b", "gpt_20b", "gpt_40b", "gpt_175b",
                "gpt_530b", "gpt_1t"}
    assert expected <= set(PRESETS)


def test_mt_nlg_and_1t_layouts():
    big = compose(["+model=gpt_530b"])
    assert (big.model.num_layers, big.model.hidden_size, big.model.num_attention_heads) == (105, 20480, 128)
    assert (big.model.tensor_model_parallel_size, big.model.pipeline_model_parallel_size) == (8, 35)
    assert big.trainer.precision == "bf16-mixed"
    assert big.model.activations_checkpoint_granularity == "selective"
    trillion = compose(["+model=gpt_1t"])
    assert (trillion.model.num_layers, trillion.model.hidden_size, trillion.model.num_attention_heads) == (128, 25600, 160)
    assert (trillion.model.tensor_model_parallel_size, trillion.model.pipeline_model_parallel_size) == (8, 64)


def test_preset_selection_spellings_agree():
    assert select_preset([]) == ["+model=gpt_tiny"]
    assert select_preset(["model=gpt_5b", "seed=3"]) == ["+model=gpt_5b", "seed=3"]
    assert select_preset(["+model=gpt_5b"]) == ["+model=gpt_5b"]
    assert compose(["model=gpt_5b"]).model == compose(["+model=gpt_5b"]).model
    assert compose([]).model.name == "gpt_tiny"


def test_command_line_overrides_beat_the_preset():
    cfg = compose(["+model=gpt_126m", "model.hidden_dropout=0.0", "model.micro_batch_size=2", "trainer.max_steps=7",
                   "seed=5", "model.attention_dropout=0.05", "model.global_batch_size=128", "trainer.devices=2",
                   "data_preparation.input=[a.txt,b.jsonl]"])
    assert cfg.model.hidden_dropout == 0.0 and cfg.model.attention_dropout == 0.05
    assert cfg.model.micro_batch_size == 2 and cfg.model.global_batch_size == 128
    assert cfg.trainer.max_steps == 7 and cfg.trainer.devices == 2 and cfg.seed == 5
    assert list(cfg.data_preparation.input) == ["a.txt", "b.jsonl"]


def test_run_dir_follows_run_name_and_data_paths_follow_run_dir():
    cfg = compose(["run_name=exp1"])
    assert cfg.run_dir == "results/exp1"
    assert cfg.model.data.data_prefix == "results/exp1/data/corpus_text_document"
    assert cfg.model.tokenizer.model == "results/exp1/data/tokenizer.model"


def test_unknown_preset_is_refused_with_the_options():
    with pytest.raises(ConfigCompositionException, match="gpt_999"):
        compose(["+model=gpt_999"])


def test_misspelt_key_is_refused():
    with pytest.raises(ConfigCompositionException) as info:
        compose(["model.hiden_size=3"])
    assert "Key 'hiden_size' not in 'ModelConfig'" in str(info.value.__cause__)


def test_wrong_type_is_refused():
    with pytest.raises(ConfigCompositionException) as info:
        compose(["model.hidden_size=big"])
    assert isinstance(info.value.__cause__, ValidationError)

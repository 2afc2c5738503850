from nemo_llm.models.gpt.builder import gpt_config_from
from nemo_llm.models.gpt.model import GPTConfig, GPTModel, gpt_loss, pad_vocab_size

__all__ = ["gpt_config_from", "GPTConfig", "GPTModel", "gpt_loss", "pad_vocab_size"]

from nemo_llm.models.gpt.builder import gpt_config_from
from nemo_llm.models.gpt.model import IGNORE_INDEX, GPTConfig, GPTModel, KVCache, gpt_loss, pad_vocab_size

__all__ = ["IGNORE_INDEX", "gpt_config_from", "GPTConfig", "GPTModel", "KVCache", "gpt_loss", "pad_vocab_size"]

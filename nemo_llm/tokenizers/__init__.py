"""Tokenizers behind one interface (nemo_llm.tokenizers.base.Tokenizer)."""

from nemo_llm.tokenizers.base import Tokenizer, TokenizerError, build_tokenizer, tokenizer_config
from nemo_llm.tokenizers.byte import ByteTokenizer
from nemo_llm.tokenizers.huggingface import HuggingFaceTokenizer
from nemo_llm.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece

__all__ = ["ByteTokenizer", "HuggingFaceTokenizer", "SentencePieceTokenizer", "Tokenizer", "TokenizerError",
           "build_tokenizer", "tokenizer_config", "train_sentencepiece"]

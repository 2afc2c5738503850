"""Hugging Face interop: import_hf (GPT-2 / Llama folder -> nemo_llm checkpoint), export_hf (GPTModel ->
folder transformers loads) and load (any model path -> model, tokenizer). See README.md."""

from nemo_llm.convert.architectures import ConversionError
from nemo_llm.convert.hf import export_hf, import_hf
from nemo_llm.convert.load import load

__all__ = ["ConversionError", "export_hf", "import_hf", "load"]

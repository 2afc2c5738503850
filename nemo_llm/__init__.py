"""nemo_llm: config-driven, end-to-end training of GPT language models (see README.md)."""

__version__ = "0.1.0"

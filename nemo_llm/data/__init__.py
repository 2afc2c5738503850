"""Corpora, tokenization into Megatron's indexed format, and GPT samples."""

"""Text generation."""

from nemo_llm.inference.generate import generate, sample_next_token

__all__ = ["generate", "sample_next_token"]

"""Everything that changes how the plain GPT model runs, applied from outside the model."""

from nemo_llm.parallel.recompute import apply_recompute

__all__ = ["apply_recompute"]

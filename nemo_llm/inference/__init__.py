"""Inference: scoring and text generation (KV cache, sampling, stop strings, streaming) at any
tensor x pipeline layout, and a REST server."""

from nemo_llm.inference.engine import (Generation, GenerationTooLongError, InferenceEngine, TokenEvent,
                                       TokenScores)
from nemo_llm.inference.runner import ModelRunner
from nemo_llm.inference.sampling import SamplingParams, sample_next_token

__all__ = ["Generation", "GenerationTooLongError", "InferenceEngine", "ModelRunner", "SamplingParams", "TokenEvent",
           "TokenScores", "sample_next_token"]

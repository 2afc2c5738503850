"""Perplexity with InferenceEngine scoring, so it runs at any tensor x pipeline x data layout.

- split_perplexity: the held-out splits of the training corpus, in the training samples' shape
  (encoder_seq_length tokens each, documents packed back to back), as validation loss sees them.
- document_perplexity: whole documents of any length (WikiText and the like), each scored from an
  end-of-document token in rolling windows, reported per token, per word and in bits per byte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.utils.data import Dataset

from nemo_llm.evaluation.loglikelihood import rolling_loglikelihood
from nemo_llm.inference.engine import InferenceEngine

SCORING_CHUNK = 256  # sequences handed to the engine at once: bounds the per-token scores held in memory


def _perplexity(nll: float, count: int) -> float:
    return math.exp(min(nll / count, 700.0))  # exp overflows a float past ~709


def split_perplexity(engine: InferenceEngine, dataset: Dataset, num_samples: int = 0, batch_size: int = 8) -> dict:
    """{"loss", "perplexity", "tokens", "samples"} over the first num_samples samples of a GPT
    dataset (0: all). loss is the mean negative log-likelihood per token in nats."""
    count = len(dataset) if num_samples == 0 else min(num_samples, len(dataset))
    nll, tokens = 0.0, 0
    for start in range(0, count, SCORING_CHUNK):
        sequences = []
        for i in range(start, min(start + SCORING_CHUNK, count)):
            sample = dataset[i]
            sequences.append([*sample["tokens"].tolist(), int(sample["labels"][-1])])
        for scores in engine.score(sequences, batch_size):
            nll -= sum(scores.logprobs)
            tokens += len(scores.logprobs)
    if tokens == 0:
        raise ValueError("no samples to score")
    return {"loss": nll / tokens, "perplexity": _perplexity(nll, tokens), "tokens": tokens, "samples": count}


def document_perplexity(engine: InferenceEngine, documents: Sequence[str], stride: int | None = None,
                        batch_size: int = 8) -> dict:
    """Perplexity of whole documents: {"documents", "tokens", "words", "bytes", "token_perplexity",
    "word_perplexity", "bits_per_byte"}. Every token is predicted exactly once, from at least
    context - stride tokens (stride None: disjoint windows of the model's context). Per-word and
    per-byte figures divide the same total log-likelihood by whitespace-separated words and UTF-8
    bytes, so that models with different tokenizers can be compared; empty documents are skipped."""
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise ValueError("no document has any text")
    token_ids = [engine.tokenizer.encode(d) for d in documents]
    nll = 0.0
    for start in range(0, len(documents), SCORING_CHUNK):
        nll -= sum(rolling_loglikelihood(engine, token_ids[start:start + SCORING_CHUNK], stride, batch_size))
    tokens = sum(len(ids) for ids in token_ids)
    words = sum(len(d.split()) for d in documents)
    num_bytes = sum(len(d.encode("utf-8")) for d in documents)
    return {"documents": len(documents), "tokens": tokens, "words": words, "bytes": num_bytes,
            "token_perplexity": _perplexity(nll, tokens), "word_perplexity": _perplexity(nll, words),
            "bits_per_byte": nll / num_bytes / math.log(2)}

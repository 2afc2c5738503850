"""Log-likelihood requests on top of InferenceEngine.score: what every benchmark reduces to.

- loglikelihood: log p(continuation | context) summed over the continuation's tokens, and whether
  greedy decoding would have produced exactly the continuation (LAMBADA accuracy, multiple choice).
- rolling_loglikelihood: the log-likelihood of a whole document of any length, scored in windows of
  the model's context (perplexity of long documents).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nemo_llm.inference.engine import InferenceEngine
from nemo_llm.tokenizers import Tokenizer


@dataclass
class LogLikelihood:
    logprob: float  # natural log
    is_greedy: bool  # every continuation token was the argmax
    num_tokens: int  # continuation tokens scored


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation such that together they are the tokens of the joined
    text. Spaces at the end of the context move to the continuation ("Answer: " + "yes" scores
    " yes"), and the continuation's ids are cut from the joined encoding, because most tokenizers
    fold a leading space into the next word's token."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    context_ids = tokenizer.encode(stripped) if stripped else []
    whole = tokenizer.encode(stripped + continuation)
    if whole[:len(context_ids)] != context_ids:  # the join merged across the boundary
        return context_ids, tokenizer.encode(continuation)
    return context_ids, whole[len(context_ids):]


def loglikelihood(engine: InferenceEngine, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                  batch_size: int = 8) -> list[LogLikelihood]:
    """(context ids, continuation ids) -> LogLikelihood. An empty context starts from end-of-document;
    context longer than the model's window is cut from the left, as the model would have read it."""
    window = engine.max_sequence_length + 1
    sequences = []
    for i, (context, continuation) in enumerate(requests):
        if not continuation:
            raise ValueError(f"request {i}: the continuation has no tokens")
        if len(continuation) > engine.max_sequence_length:
            raise ValueError(f"request {i}: a continuation of {len(continuation)} tokens does not fit the model's "
                             f"context of {engine.max_sequence_length}")
        context = list(context) or [_eod(engine)]
        sequences.append((context + list(continuation))[-window:])
    scores = engine.score(sequences, batch_size)
    results = []
    for (_, continuation), score in zip(requests, scores):
        n = len(continuation)
        results.append(LogLikelihood(sum(score.logprobs[-n:]), all(score.greedy[-n:]), n))
    return results


def rolling_windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a document of num_tokens tokens preceded by one start token (position 0), so that
    targets are positions 1 .. num_tokens. Each window is (start, end, first): the model reads
    positions start .. end - 1 and scores targets first .. end, each target exactly once. The first
    window scores `window` targets, each later one the next `stride` targets, and every window reads
    the `window` positions before its end (fewer only at the document's start): with stride ==
    window the last window of a long document still sees a full context, as in lm-eval; a smaller
    stride gives every target at least window - stride tokens of context, at more compute."""
    if not 1 <= stride <= window:
        raise ValueError(f"stride {stride} must be between 1 and the window of {window} tokens")
    windows, scored = [], 0
    while scored < num_tokens:
        end = min(scored + (window if scored == 0 else stride), num_tokens)
        windows.append((max(0, end - window), end, scored + 1))
        scored = end
    return windows


def rolling_loglikelihood(engine: InferenceEngine, documents: Sequence[Sequence[int]], stride: int | None = None,
                          batch_size: int = 8) -> list[float]:
    """Total log-likelihood of each document's tokens (the first predicted from end-of-document)."""
    window = engine.max_sequence_length
    stride = stride or window
    sequences, owners = [], []
    for doc_index, doc in enumerate(documents):
        tokens = [_eod(engine), *doc]
        for start, end, first in rolling_windows(len(doc), window, stride):
            sequences.append(tokens[start:end + 1])
            owners.append((doc_index, end - first + 1))
    if not sequences:
        return [0.0] * len(documents)
    totals = [0.0] * len(documents)
    for (doc_index, scored), score in zip(owners, engine.score(sequences, batch_size)):
        totals[doc_index] += sum(score.logprobs[-scored:])
    return totals


def _eod(engine: InferenceEngine) -> int:
    if engine.tokenizer is None:
        raise ValueError("an empty context starts from end-of-document, which needs the model's tokenizer")
    return engine.tokenizer.eod_id

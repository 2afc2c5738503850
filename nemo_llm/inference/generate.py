"""Autoregressive sampling: greedy, top-k and top-p (nucleus, Holtzman et al. 2019)."""

from __future__ import annotations

import torch
from torch import nn


def sample_next_token(logits: torch.Tensor, strategy: str = "greedy", temperature: float = 1.0, top_k: int = 0,
                      top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [b, V] -> token ids [b]."""
    if strategy == "greedy":
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if strategy == "top_k":
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    elif strategy == "top_p":
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    else:
        raise ValueError(f"unknown sampling strategy {strategy!r}: use greedy, top_k or top_p")
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: nn.Module, prompt_ids: torch.Tensor, max_new_tokens: int, max_context: int,
             strategy: str = "greedy", temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             eod_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """prompt_ids [b, s] -> [b, s + n] with n <= max_new_tokens new tokens (stops early when every
    row produced eod_id). The context is cropped to the last max_context tokens."""
    ids = prompt_ids
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits = model(ids[:, -max_context:])[:, -1, :]
        next_ids = sample_next_token(logits, strategy, temperature, top_k, top_p, generator)
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
        if eod_id is not None:
            finished |= next_ids == eod_id
            if finished.all():
                break
    return ids

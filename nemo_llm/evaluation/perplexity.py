"""Token-weighted loss and perplexity of a model over a dataloader of GPT samples."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from nemo_llm.data.gpt_dataset import DatasetTooSmallError
from nemo_llm.models.gpt import IGNORE_INDEX


@torch.no_grad()
def evaluate_perplexity(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], max_batches: int = 0,
                        device: torch.device | str = "cpu") -> dict[str, float]:
    """{"loss", "perplexity", "tokens", "batches"} over at most max_batches batches (0: all)."""
    model.eval()
    loss_sum, tokens, count = 0.0, 0.0, 0
    for batch in batches:
        if max_batches and count >= max_batches:
            break
        logits = model(batch["tokens"].to(device))
        labels = batch["labels"].to(device).flatten()
        loss_sum += float(F.cross_entropy(logits.float().flatten(0, 1), labels, ignore_index=IGNORE_INDEX,
                                          reduction="sum"))
        tokens += float((labels != IGNORE_INDEX).sum())
        count += 1
    if tokens == 0:
        raise DatasetTooSmallError("no evaluation tokens: the split is smaller than one micro batch")
    loss = loss_sum / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(tokens), "batches": count}

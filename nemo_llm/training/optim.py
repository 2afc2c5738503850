"""Optimizer, schedule and gradient clipping for GPT pretraining."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

from nemo_llm.training.lr_schedule import cosine_annealing_lr


def build_optimizer(model: nn.Module, optim: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW with Megatron's parameter groups: weight decay on matrices and embeddings only, never on
    biases or norm scales (one-dimensional parameters)."""
    decay, no_decay = [], []
    for param in model.parameters():  # tied weights appear once
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": optim["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # An empty group breaks restoring a checkpoint's optimizer state by parameter name (a prompt table
    # has no 1-D parameter); a stage with nothing to train keeps one empty group, as AdamW needs one.
    groups = [g for g in groups if g["params"]] or groups[:1]
    # A pipeline stage of a frozen model may have nothing to train: no fused kernel to pick then.
    on_gpu = bool(decay + no_decay) and all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"],
                             fused=on_gpu or None)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: Mapping[str, Any], max_steps: int):
    """LambdaLR whose factor makes the learning rate cosine_annealing_lr(step) / lr x lr."""
    sched = optim["sched"]
    schedule = partial(cosine_annealing_lr, max_lr=1.0, min_lr=sched["min_lr"] / optim["lr"],
                       warmup_steps=sched["warmup_steps"], constant_steps=sched["constant_steps"],
                       max_steps=max_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale gradients so their global L2 norm is at most max_norm (0: no clipping); returns the
    norm before clipping, which is what Megatron logs as grad_norm."""
    parameters = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters], 2.0)
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm

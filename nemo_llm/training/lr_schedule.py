"""Learning-rate schedule: linear warmup, cosine decay, then a constant tail at min_lr (Megatron's
and NeMo's CosineAnnealing)."""

from __future__ import annotations

import math


def cosine_annealing_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, constant_steps: int,
                        max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    decay_steps = max_steps - warmup_steps - constant_steps
    if decay_steps <= 0 or step >= max_steps - constant_steps:
        return min_lr
    progress = (step - warmup_steps) / decay_steps
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))

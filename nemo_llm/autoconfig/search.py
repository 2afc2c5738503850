"""Layout search: every tensor x pipeline (x virtual pipeline) x data layout, sequence parallelism,
micro batch and recompute policy that divides the model and the GPUs, ranked by the estimator's
throughput among those that fit in memory; and the same for inference (tensor x pipeline x batch
under a latency limit)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

from nemo_llm.autoconfig.estimator import (RECOMPUTE, Efficiency, InferenceEstimate, InferenceLayout,
                                           TrainingEstimate, TrainingLayout, estimate_inference, estimate_training)
from nemo_llm.autoconfig.hardware import Hardware


@dataclass(frozen=True)
class TrainingSpace:
    """The values tried; None: every value that divides (tensor: powers of two up to a node;
    pipeline: divisors of the layers; virtual: divisors of the layers per stage)."""

    tensor_parallel: Sequence[int] | None = None
    pipeline_parallel: Sequence[int] | None = None
    virtual_pipeline: Sequence[int] | None = (1, 2, 3, 4, 6, 8, 12)
    micro_batch_size: Sequence[int] = (1, 2, 4, 8)
    recompute: Sequence[str] = RECOMPUTE
    sequence_parallel: Sequence[bool] = (False, True)
    distributed_optimizer: Sequence[bool] = (True,)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def training_layouts(shape: SimpleNamespace, num_gpus: int, hw: Hardware, space: TrainingSpace) -> Iterator[TrainingLayout]:
    """Layouts that divide: heads and query groups by t (t within a node), layers by p x v, GPUs by t x p,
    the global batch by micro batch x dp; sequence parallelism only with t > 1 and recompute of whole
    layers in blocks of one layer."""
    heads, groups = shape.num_attention_heads, shape.num_query_groups or shape.num_attention_heads
    gbs = shape.global_batch_size
    tps = space.tensor_parallel or [t for t in (1, 2, 4, 8, 16) if t <= hw.gpus_per_node]
    pps = space.pipeline_parallel or _divisors(shape.num_layers)
    for t in tps:
        if heads % t or groups % t or num_gpus % t:
            continue
        for p in pps:
            if shape.num_layers % p or num_gpus % (t * p):
                continue
            dp = num_gpus // (t * p)
            for v in space.virtual_pipeline or (1,):
                if v > 1 and (p == 1 or (shape.num_layers // p) % v):
                    continue
                for b in space.micro_batch_size:
                    if gbs % (b * dp):
                        continue
                    if v > 1 and (gbs // (b * dp)) % p:
                        continue  # the interleaved schedule runs microbatches in groups of p
                    for sp in space.sequence_parallel:
                        if sp and t == 1:
                            continue
                        for recompute in space.recompute:
                            for distributed in space.distributed_optimizer:
                                yield TrainingLayout(t, p, dp, b, gbs, v, sp, recompute, 1, distributed and dp > 1)


def search_training(shape: SimpleNamespace, num_gpus: int, hw: Hardware, precision: str, tokens: float,
                    space: TrainingSpace = TrainingSpace(), efficiency: Efficiency = Efficiency(),
                    tflops_per_gpu: float | None = None, memory_model: str = "nemo_llm",
                    memory_fraction: float = 0.9) -> list[TrainingEstimate]:
    """Every layout's estimate, those that fit first, each group by predicted tokens/s (fastest first)."""
    seen, estimates = set(), []
    for layout in training_layouts(shape, num_gpus, hw, space):
        if layout in seen:
            continue
        seen.add(layout)
        estimates.append(estimate_training(shape, layout, hw, precision, tokens, efficiency, tflops_per_gpu,
                                           memory_model, memory_fraction))
    return sorted(estimates, key=lambda e: (not e.fits, -e.tokens_per_s, e.memory.total))


def search_inference(shape: SimpleNamespace, num_gpus: int, hw: Hardware, input_length: int, output_length: int,
                     batch_sizes: Sequence[int], max_latency_s: float | None = None,
                     efficiency: Efficiency = Efficiency(), memory_fraction: float = 0.9) -> list[InferenceEstimate]:
    """Every tensor x pipeline x batch layout on num_gpus (replicas fill the rest); those that fit and
    meet max_latency_s first, each group by generated tokens/s."""
    heads, groups = shape.num_attention_heads, shape.num_query_groups or shape.num_attention_heads
    estimates = []
    for t in (1, 2, 4, 8, 16):
        if t > hw.gpus_per_node or heads % t or groups % t or t > num_gpus:
            continue
        for p in _divisors(shape.num_layers):
            if t * p > num_gpus:
                break
            for b in batch_sizes:
                estimates.append(estimate_inference(shape, InferenceLayout(t, p, b), hw, num_gpus, input_length,
                                                    output_length, efficiency, memory_fraction))

    def ok(e: InferenceEstimate) -> bool:
        return e.fits and (max_latency_s is None or e.latency_s <= max_latency_s)

    return sorted(estimates, key=lambda e: (not ok(e), -e.tokens_per_s, e.latency_s))

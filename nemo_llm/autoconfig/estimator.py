"""The analytical model of a training or inference layout: FLOPs, memory, communication and time.

Sources: parameter and FLOPs counts as in Narayanan et al. 2021 ("Efficient Large-Scale Language
Model Training on GPU Clusters Using Megatron-LM"), counted exactly from the shapes
(nemo_llm.plan.forward_flops_per_token); activations per Korthikanti et al. 2022 ("Reducing
Activation Recomputation in Large Transformer Models"), the same arithmetic the printed plan uses
(nemo_llm.plan.estimate_memory); the pipeline bubble (p-1)/m, divided by v when interleaved;
communication volumes of ring collectives. docs/auto_configurator.md gives the formulas and the
model's error against published figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nemo_llm.autoconfig.hardware import Hardware
from nemo_llm.plan import (MemoryEstimate, count_parameters, estimate_memory, forward_flops_per_token,
                           padded_vocab_size, stage_parameters)

RECOMPUTE = ("none", "selective", "full")
# Megatron-LM's bytes per parameter (docs/source/api-guide/dist_optimizer.md): (weights, gradients,
# optimizer incl. fp32 master weights); the distributed optimizer shards the optimizer part, plus
# the fp32 gradients for fp16.
MEGATRON_BYTES = {"bf16-mixed": (2, 4, 12), "16-mixed": (2, 2, 16), "32": (4, 4, 8)}


@dataclass(frozen=True)
class TrainingLayout:
    tp: int
    pp: int
    dp: int
    micro_batch_size: int
    global_batch_size: int
    vp: int = 1
    sp: bool = False
    recompute: str = "none"  # none | selective | full (uniform, recompute_num_layers per block)
    recompute_num_layers: int = 1
    distributed_optimizer: bool = True

    def __post_init__(self) -> None:
        if self.global_batch_size % (self.micro_batch_size * self.dp):
            raise ValueError(f"global batch {self.global_batch_size} is not a multiple of micro batch "
                             f"{self.micro_batch_size} x data parallel {self.dp}")

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def num_microbatches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.dp)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gpus": self.gpus, "num_microbatches": self.num_microbatches}


@dataclass(frozen=True)
class Efficiency:
    """Achieved share of peak of the matmuls on one GPU. It grows with the size of the layer's matrix
    multiplications on a GPU, measured by the geometric mean of their two dimensions h and h/t:
    max_fraction x (1 - exp(-(h / sqrt(t)) / scale)). The constants are fitted to Narayanan et al.
    2021, Table 1 (scripts/calibrate_estimator.py: 5% RMS error there, 10% at most on the held-out
    published runs); dp_overlap is the share of the data-parallel gradient reduction hidden behind
    the backward pass."""

    max_fraction: float = 0.61
    scale: float = 1325.0
    dp_overlap: float = 0.5

    def compute_fraction(self, hidden: int, tp: int) -> float:
        return self.max_fraction * (1 - math.exp(-(hidden / math.sqrt(tp)) / self.scale))


def _namespace(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    return value


def model_shape(model: DictConfig) -> SimpleNamespace:
    """A plain copy of the model config (fast to copy and read for thousands of candidates)."""
    return _namespace(OmegaConf.to_container(model, resolve=True))


def layout_config(shape: SimpleNamespace, layout: TrainingLayout, precision: str) -> SimpleNamespace:
    """What nemo_llm.plan reads, for shape trained at layout (cfg.model, cfg.trainer)."""
    model = SimpleNamespace(**vars(shape))
    model.tensor_model_parallel_size = layout.tp
    model.pipeline_model_parallel_size = layout.pp
    model.virtual_pipeline_model_parallel_size = layout.vp if layout.vp > 1 else None
    model.pipeline_model_parallel_layer_split = None
    model.pipeline_schedule = "1f1b"
    model.sequence_parallel = layout.sp
    model.micro_batch_size = layout.micro_batch_size
    model.global_batch_size = layout.global_batch_size
    model.activations_checkpoint_granularity = None if layout.recompute == "none" else layout.recompute
    model.activations_checkpoint_method = "uniform"
    model.activations_checkpoint_num_layers = layout.recompute_num_layers
    model.use_distributed_optimizer = layout.distributed_optimizer
    return SimpleNamespace(model=model, trainer=SimpleNamespace(devices=layout.gpus, num_nodes=1, precision=precision))


def megatron_parameter_memory(params: float, precision: str, distributed: bool, dp: int) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes of `params` parameters under Megatron-LM's accounting."""
    weights, gradients, optimizer = MEGATRON_BYTES[precision]
    return params * weights, params * gradients, params * optimizer / (dp if distributed else 1)


@dataclass
class TrainingEstimate:
    layout: TrainingLayout
    num_parameters: int
    model_flops_per_iteration: float
    hardware_flops_per_iteration: float
    memory: MemoryEstimate
    pipeline_bubble_fraction: float
    communication_bytes_per_gpu: dict[str, float]  # per step: tp, pp, dp
    time_s: dict[str, float]  # per step: compute, bubble, tp, pp, dp (exposed)
    iteration_time_s: float
    tokens_per_s: float
    model_tflops_per_gpu: float
    mfu: float
    days_to_train: float
    fits: bool

    def as_dict(self) -> dict[str, Any]:
        mem = self.memory
        return {"num_parameters": self.num_parameters,
                "model_flops_per_iteration": self.model_flops_per_iteration,
                "hardware_flops_per_iteration": self.hardware_flops_per_iteration,
                "memory_bytes_per_gpu": {"weights": mem.weights, "gradients": mem.gradients,
                                         "optimizer": mem.optimizer, "activations": mem.activations,
                                         "total": mem.total},
                "pipeline_bubble_fraction": self.pipeline_bubble_fraction,
                "communication_bytes_per_gpu": self.communication_bytes_per_gpu,
                "time_s": self.time_s, "iteration_time_s": self.iteration_time_s,
                "tokens_per_s": self.tokens_per_s, "model_tflops_per_gpu": self.model_tflops_per_gpu,
                "mfu": self.mfu, "days_to_train": self.days_to_train, "fits": self.fits,
                "layout": self.layout.as_dict()}


def pipeline_bubble_fraction(pp: int, num_microbatches: int, vp: int = 1) -> float:
    """Idle time of a pipeline relative to its compute: (p - 1) / m, divided by v when interleaved."""
    return (pp - 1) / (num_microbatches * vp)


def ring_factor(group: int, all_reduce: bool) -> float:
    """Bytes each member sends per byte of the tensor: 2(n-1)/n for an all-reduce, (n-1)/n for an
    all-gather or a reduce-scatter."""
    return (2 if all_reduce else 1) * (group - 1) / group


def communication_bytes(shape: SimpleNamespace, layout: TrainingLayout, params_per_gpu: float,
                        grad_bytes: float) -> dict[str, float]:
    """Bytes each GPU sends per step. Tensor parallelism: two all-reduces of the activations per layer
    forward and two backward (sequence parallelism turns each into an all-gather and a reduce-scatter,
    the same volume), two more forward under full recompute. Pipeline: one activation forward and
    one gradient backward per microbatch and stage boundary (x v interleaved; sharded by t with
    sequence parallelism). Data parallel: the gradients reduced (reduce-scatter + all-gather of the
    distributed optimizer moves the same volume)."""
    b, s, h = layout.micro_batch_size, shape.encoder_seq_length, shape.hidden_size
    activation = b * s * h * 2  # bf16
    m, t = layout.num_microbatches, layout.tp
    layers = shape.num_layers / layout.pp
    collectives = 4 + (2 if layout.recompute == "full" else 0)
    tp = layers * m * collectives * ring_factor(t, True) * activation if t > 1 else 0.0
    pp = m * 2 * layout.vp * activation / (t if layout.sp else 1) if layout.pp > 1 else 0.0
    dp = params_per_gpu * grad_bytes * ring_factor(layout.dp, True) if layout.dp > 1 else 0.0
    return {"tp": tp, "pp": pp, "dp": dp}


def estimate_training(shape: SimpleNamespace, layout: TrainingLayout, hw: Hardware, precision: str,
                      tokens: float, efficiency: Efficiency = Efficiency(), tflops_per_gpu: float | None = None,
                      memory_model: str = "nemo_llm", memory_fraction: float = 0.9) -> TrainingEstimate:
    """One training layout on hw: memory of the busiest pipeline stage, step time, days for `tokens`.
    tflops_per_gpu (achieved hardware TFLOP/s per GPU, bubble and communication included) replaces the
    efficiency model, as in Narayanan et al.'s time = 8TP/(nX)."""
    cfg = layout_config(shape, layout, precision)
    vocab = padded_vocab_size(cfg.model)
    params = count_parameters(cfg.model, vocab)
    seq = shape.encoder_seq_length
    tokens_per_step = layout.global_batch_size * seq
    flops = forward_flops_per_token(cfg.model, seq, vocab)
    model_flops = flops.model_flops(tokens_per_step)
    hardware_flops = flops.hardware_flops(tokens_per_step, layout.recompute)

    # On GPUs in half precision attention runs in a flash kernel, which stores no attention scores.
    memory = estimate_memory(cfg, vocab, flash_attention=precision != "32")
    busiest = max(stage_parameters(cfg.model, vocab, True, layout.pp == 1),
                  stage_parameters(cfg.model, vocab, False, True))
    if memory_model == "megatron":
        memory = MemoryEstimate(*megatron_parameter_memory(busiest, precision, layout.distributed_optimizer, layout.dp),
                                activations=memory.activations)
    grad_bytes = 4 if memory_model == "nemo_llm" or precision != "16-mixed" else 2
    comm = communication_bytes(shape, layout, busiest, grad_bytes)
    bubble = pipeline_bubble_fraction(layout.pp, layout.num_microbatches, layout.vp)

    if tflops_per_gpu:
        iteration = hardware_flops / (layout.gpus * tflops_per_gpu * 1e12)
        times = {"compute": iteration, "bubble": 0.0, "tp": 0.0, "pp": 0.0, "dp": 0.0}
    else:
        peak = hw.peak_tflops * 1e12 * (0.5 if precision == "32" else 1.0)  # fp32 runs on TF32
        compute = hardware_flops / layout.gpus / (peak * efficiency.compute_fraction(shape.hidden_size, layout.tp))
        link = 1e9
        times = {"compute": compute, "bubble": compute * bubble,
                 "tp": comm["tp"] / (hw.link_gb_s(layout.tp) * link),
                 "pp": comm["pp"] / (hw.link_gb_s(layout.tp * layout.pp) * link),
                 "dp": comm["dp"] / (hw.link_gb_s(layout.gpus) * link) * (1 - efficiency.dp_overlap)}
        iteration = sum(times.values())
    tokens_per_s = tokens_per_step / iteration
    model_tflops = model_flops / iteration / layout.gpus / 1e12
    return TrainingEstimate(
        layout=layout, num_parameters=params,
        model_flops_per_iteration=model_flops, hardware_flops_per_iteration=hardware_flops, memory=memory,
        pipeline_bubble_fraction=bubble, communication_bytes_per_gpu=comm, time_s=times, iteration_time_s=iteration,
        tokens_per_s=tokens_per_s, model_tflops_per_gpu=model_tflops, mfu=model_tflops / hw.peak_tflops,
        days_to_train=tokens / tokens_per_s / 86400, fits=memory.total <= hw.memory_bytes * memory_fraction)


def days_to_train(parameters: float, tokens: float, gpus: int, tflops_per_gpu: float) -> float:
    """Narayanan et al. 2021, eq. 4: 8TP/(nX), X the achieved TFLOP/s per GPU with full recompute
    (6TP/(nX) of model FLOPs plus the recomputed forward)."""
    return 8 * tokens * parameters / (gpus * tflops_per_gpu * 1e12) / 86400


def largest_model(days: float, gpus: int, tflops_per_gpu: float, tokens: float | None = None,
                  flops_per_parameter_token: float = 8) -> dict[str, float]:
    """The most parameters days x gpus at tflops_per_gpu can train: on `tokens` tokens (eq. 4 of
    Narayanan et al. inverted), or compute-optimally at 20 tokens per parameter (Hoffmann et al. 2022,
    Table 3) when tokens is None. flops_per_parameter_token: 8 when tflops_per_gpu counts the
    recomputed forward (Narayanan's X), 6 when it is model FLOPs (C = 6ND)."""
    budget = days * 86400 * gpus * tflops_per_gpu * 1e12 / flops_per_parameter_token  # = T x P
    if tokens:
        return {"parameters": budget / tokens, "tokens": tokens}
    parameters = math.sqrt(budget / 20)
    return {"parameters": parameters, "tokens": 20 * parameters}


# --- inference -----------------------------------------------------------------------------------

COLLECTIVE_LATENCY_S = 10e-6  # one small all-reduce or send over NVLink; the decode step is latency-bound


@dataclass(frozen=True)
class InferenceLayout:
    tp: int
    pp: int
    batch_size: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class InferenceEstimate:
    layout: InferenceLayout
    replicas: int
    memory_bytes_per_gpu: dict[str, float]  # weights, kv_cache, total
    prefill_s: float
    decode_step_s: float
    latency_s: float
    tokens_per_s: float  # generated tokens per second over all replicas
    fits: bool

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "layout"}, "layout": self.layout.as_dict()}


def estimate_inference(shape: SimpleNamespace, layout: InferenceLayout, hw: Hardware, num_gpus: int,
                       input_length: int, output_length: int, efficiency: Efficiency = Efficiency(),
                       memory_fraction: float = 0.9) -> InferenceEstimate:
    """Prefill (compute-bound: the prompt's FLOPs) + output_length decode steps (each the larger of its
    FLOPs and reading this GPU's weights and KV cache from HBM, plus two all-reduces per layer under
    tensor parallelism and a send per stage boundary); pipeline stages run one after another for a
    batch, so their times add up. bf16 weights and cache."""
    t, p, b = layout.tp, layout.pp, layout.batch_size
    cfg = layout_config(shape, TrainingLayout(t, p, 1, b, b), "bf16-mixed")
    vocab = padded_vocab_size(cfg.model)
    params = count_parameters(cfg.model, vocab)
    heads, groups = shape.num_attention_heads, shape.num_query_groups or shape.num_attention_heads
    head_dim = shape.hidden_size // heads
    context = input_length + output_length
    weights = params * 2 / (t * p)
    kv_cache = b * context * 2 * max(groups // t, 1) * head_dim * 2 * shape.num_layers / p
    peak = hw.peak_tflops * 1e12 * efficiency.compute_fraction(shape.hidden_size, t)
    prompt_flops = forward_flops_per_token(cfg.model, input_length, vocab)
    flops_per_prompt_token = prompt_flops.layers + prompt_flops.attention / 2 + prompt_flops.logits / input_length
    prefill = b * input_length * flops_per_prompt_token / (t * peak) + weights * p / (hw.hbm_gb_s * 1e9)
    step_flops = forward_flops_per_token(cfg.model, input_length + output_length // 2, vocab)
    compute = b * (step_flops.layers + step_flops.attention + step_flops.logits) / (t * peak)
    memory_read = p * (weights + kv_cache / 2) / (hw.hbm_gb_s * 1e9)  # the cache is half full on average
    latency_terms = (2 * shape.num_layers * (t > 1) + (p - 1)) * COLLECTIVE_LATENCY_S
    decode = max(compute, memory_read) + latency_terms
    latency = prefill + output_length * decode
    replicas = num_gpus // (t * p)
    return InferenceEstimate(
        layout=layout, replicas=replicas,
        memory_bytes_per_gpu={"weights": weights, "kv_cache": kv_cache, "total": weights + kv_cache},
        prefill_s=prefill, decode_step_s=decode, latency_s=latency,
        tokens_per_s=replicas * b * output_length / latency,
        fits=weights + kv_cache <= hw.memory_bytes * memory_fraction)


__all__ = ["Efficiency", "InferenceEstimate", "InferenceLayout", "TrainingEstimate", "TrainingLayout",
           "days_to_train", "estimate_inference", "estimate_training", "largest_model", "layout_config",
           "model_shape", "pipeline_bubble_fraction"]

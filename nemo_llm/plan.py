"""The plan printed before any stage runs: exact parameter count, layout, memory per device.

Pure arithmetic on the config; nothing is allocated. Memory follows what nemo_llm does when it
trains (fp32 parameters and gradients, AdamW's two fp32 moments, sharded over data-parallel
ranks with the distributed optimizer; bf16/fp16 compute) and activations follow Korthikanti et
al. 2022, "Reducing Activation Recomputation in Large Transformer Models", section 4.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from omegaconf import DictConfig

from nemo_llm.config.validation import data_parallel_size, microbatch_count
from nemo_llm.models.gpt.model import pad_vocab_size

GiB = 1024**3
BYTES_PER_PARAM = {"weights": 4, "gradients": 4, "optimizer": 8}  # fp32 master, fp32 grads, AdamW's 2 moments
COMPUTE_BYTES = {"32": 4, "bf16-mixed": 2, "16-mixed": 2}


def parameter_bytes(cfg: DictConfig, params: float) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes for `params` parameters on one rank.

    Replicated data parallelism keeps all three whole. The distributed optimizer (FSDP2) shards
    each over the data-parallel ranks, and keeps the parameters gathered in the compute dtype
    from forward to backward."""
    if not cfg.model.use_distributed_optimizer:
        # Autocast caches a half-precision copy of each weight for the step.
        cache = params * 2 if str(cfg.trainer.precision) != "32" else 0
        return (params * BYTES_PER_PARAM["weights"] + cache, params * BYTES_PER_PARAM["gradients"],
                params * BYTES_PER_PARAM["optimizer"])
    dp = data_parallel_size(cfg)
    gathered = params * COMPUTE_BYTES[str(cfg.trainer.precision)]
    return (params * BYTES_PER_PARAM["weights"] / dp + gathered, params * BYTES_PER_PARAM["gradients"] / dp,
            params * BYTES_PER_PARAM["optimizer"] / dp)


def configured_vocab_size(m: DictConfig) -> int:
    """The tokenizer's vocabulary as configured (byte-level is always 257)."""
    return 257 if m.tokenizer.library == "byte" else m.tokenizer.vocab_size


def padded_vocab_size(m: DictConfig, vocab_size: int | None = None) -> int:
    return pad_vocab_size(vocab_size or configured_vocab_size(m), m.make_vocab_size_divisible_by,
                          m.tensor_model_parallel_size)


def _norm_params(m: DictConfig) -> int:
    return m.hidden_size if m.normalization == "rmsnorm" else 2 * m.hidden_size


def layer_parameters(m: DictConfig) -> tuple[int, int]:
    """(split over tensor-parallel ranks, replicated on each) parameters of one transformer layer."""
    h, f, heads = m.hidden_size, m.ffn_hidden_size, m.num_attention_heads
    groups = m.num_query_groups or heads
    d = h // heads
    qkv = (heads + 2 * groups) * d
    fc1 = 2 * f if m.activation == "swiglu" else f
    bias = 1 if m.bias else 0
    split = h * qkv + bias * qkv + heads * d * h + h * fc1 + bias * fc1 + f * h
    replicated = 2 * _norm_params(m) + bias * 2 * h  # two norms; row-parallel biases (proj, fc2)
    return split, replicated


def embedding_parameters(m: DictConfig, vocab: int) -> tuple[int, int]:
    """(vocab-parallel word embeddings, replicated position embeddings)."""
    positions = m.max_position_embeddings * m.hidden_size if m.position_embedding_type == "learned_absolute" else 0
    return vocab * m.hidden_size, positions


def count_parameters(m: DictConfig, vocab: int | None = None) -> int:
    """Exact parameter count of GPTModel built from m with the padded vocabulary."""
    vocab = vocab or padded_vocab_size(m)
    split, replicated = layer_parameters(m)
    words, positions = embedding_parameters(m, vocab)
    output = 0 if m.share_embeddings_and_output_weights else vocab * m.hidden_size
    return m.num_layers * (split + replicated) + words + positions + _norm_params(m) + output


def gpt3_formula_parameters(num_layers: int, hidden: int, vocab: int, seq: int) -> float:
    """Narayanan et al. 2021: P = 12 l h^2 (1 + 13/(12h) + (V+s)/(12 l h)). It leaves out the final
    LayerNorm (2h), so for a GPT-3 style model count_parameters() = this + 2h."""
    l, h = num_layers, hidden
    return 12 * l * h**2 * (1 + 13 / (12 * h) + (vocab + seq) / (12 * l * h))


def model_flops_per_iteration(batch: int, seq: int, num_layers: int, hidden: int, vocab: int) -> float:
    """The published closed form of model FLOPs per iteration (forward + backward, no recompute),
    Narayanan et al. 2021: 72 B s l h^2 (1 + s/(6h) + V/(12 l h)), for GPT-3 shapes (MHA, ffn 4h,
    GELU). What nemo_llm reports is counted by forward_flops_per_token, which equals it there."""
    b, s, l, h = batch, seq, num_layers, hidden
    return 72 * b * s * l * h**2 * (1 + s / (6 * h) + vocab / (12 * l * h))


@dataclass
class TokenFlops:
    """Forward matmul FLOPs per token: every layer's weight matmuls, every layer's attention (scores and
    values, over the whole sequence as Megatron counts it), the output layer."""

    layers: float
    attention: float
    logits: float

    def model_flops(self, tokens: float) -> float:
        """Training FLOPs without recompute: the backward pass costs twice the forward."""
        return 3 * tokens * (self.layers + self.attention + self.logits)

    def hardware_flops(self, tokens: float, recompute: str) -> float:
        """model_flops plus the forward work recompute repeats: the whole layers (full) or the attention
        core (selective); the output layer is never recomputed."""
        extra = {"none": 0.0, "selective": self.attention, "full": self.layers + self.attention}[recompute]
        return self.model_flops(tokens) + tokens * extra


def forward_flops_per_token(m: DictConfig, seq: int, vocab: int) -> TokenFlops:
    """Counted from the shapes (GQA, SwiGLU, any ffn size); for GPT-3 shapes 3 x their sum is the
    formula of model_flops_per_iteration per token."""
    h, f, heads = m.hidden_size, m.ffn_hidden_size, m.num_attention_heads
    groups = m.num_query_groups or heads
    d = h // heads
    fc1 = 2 * f if m.activation == "swiglu" else f
    weights = h * (heads + 2 * groups) * d + heads * d * h + h * fc1 + f * h
    return TokenFlops(layers=2 * weights * m.num_layers, attention=2 * 2 * seq * heads * d * m.num_layers,
                      logits=2 * h * vocab)


def activation_bytes_per_layer(m: DictConfig, micro_batch: int, flash_attention: bool = False) -> float:
    """Activations one layer keeps for backward, per microbatch, in bytes at 16-bit (Korthikanti et al.).
    A flash-attention kernel (SDPA on a GPU in half precision) keeps no attention scores: the layer
    then holds what selective recompute leaves."""
    s, b, h, a = m.encoder_seq_length, micro_batch, m.hidden_size, m.num_attention_heads
    t = m.tensor_model_parallel_size
    sp = m.sequence_parallel and t > 1
    sbh = s * b * h
    attention_scores = 5 * a * s / h
    granularity = m.activations_checkpoint_granularity
    if granularity == "selective" or flash_attention:  # no attention core (softmax, dropout, scores) kept
        return 34 * sbh / t if sp else sbh * (10 + 24 / t)
    if sp:
        return sbh / t * (34 + attention_scores)
    return sbh * (10 + 24 / t + attention_scores / t)


@dataclass
class MemoryEstimate:
    """Bytes per device on the pipeline stage that needs the most."""

    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def pipeline_rank_layers(m: DictConfig, pp_rank: int) -> int:
    """Transformer layers held by pipeline rank pp_rank (all its virtual stages)."""
    pp, vp = m.pipeline_model_parallel_size, m.virtual_pipeline_model_parallel_size or 1
    split = m.pipeline_model_parallel_layer_split
    if split is None:
        return m.num_layers // pp
    return sum(split[pp_rank + chunk * pp] for chunk in range(vp))


def stage_parameters(m: DictConfig, vocab: int, first: bool, last: bool) -> int:
    """Parameters held by one rank of the first and/or last pipeline stage."""
    t, pp = m.tensor_model_parallel_size, m.pipeline_model_parallel_size
    split, replicated = layer_parameters(m)
    layers = pipeline_rank_layers(m, 0 if first else pp - 1)
    params = layers * (split / t + replicated)
    words, positions = embedding_parameters(m, vocab)
    if first:
        params += words / t + positions
    if last:
        params += _norm_params(m)
        # Untied: the output layer. Tied across stages: the last stage keeps its own copy.
        if not m.share_embeddings_and_output_weights or (pp > 1 and not first):
            params += words / t
    return int(params)


def estimate_memory(cfg: DictConfig, vocab: int, flash_attention: bool = False) -> MemoryEstimate:
    m = cfg.model
    pp, t = m.pipeline_model_parallel_size, m.tensor_model_parallel_size
    b, s = m.micro_batch_size, m.encoder_seq_length
    num_micro = microbatch_count(m.global_batch_size, b, data_parallel_size(cfg))
    per_layer = activation_bytes_per_layer(m, b, flash_attention)
    layer_input = 2 * s * b * m.hidden_size / (t if m.sequence_parallel and t > 1 else 1)
    n = m.activations_checkpoint_num_layers

    def stage_activations(layers: int) -> float:
        if m.activations_checkpoint_granularity == "full" and m.activations_checkpoint_method == "uniform":
            return math.ceil(layers / n) * layer_input
        if m.activations_checkpoint_granularity == "full":  # block: the first n layers only
            return min(n, layers) * layer_input + max(layers - n, 0) * per_layer
        return layers * per_layer

    # 1F1B: the first stage holds up to pp microbatches in flight; interleaving adds (p-1)/(p*v);
    # GPipe runs every microbatch forward before any backward.
    in_flight = num_micro if pp > 1 and m.pipeline_schedule == "gpipe" else min(pp, num_micro)
    vp = m.virtual_pipeline_model_parallel_size or 1
    if vp > 1:
        in_flight *= 1 + (pp - 1) / (pp * vp)
    precision_scale = COMPUTE_BYTES[str(cfg.trainer.precision)] / 2  # the formulas count 16-bit activations
    logits = 4 * s * b * vocab / t  # fp32 logits for the loss on the last stage
    if m.cross_entropy_loss_fusion:  # one chunk's fp32 logits and their gradient, the fp32 output-layer gradient
        logits = 4 * vocab * (2 * min(m.cross_entropy_chunk_tokens, s * b) + m.hidden_size)

    candidates = []
    for first, last in ((True, pp == 1), (False, True)):
        params = stage_parameters(m, vocab, first, last)
        held = in_flight if first else 1
        layers = pipeline_rank_layers(m, 0 if first else pp - 1)
        activations = stage_activations(layers) * held * precision_scale + (logits if last else 0)
        candidates.append(MemoryEstimate(
            *parameter_bytes(cfg, params),
            activations=activations,
        ))
    return max(candidates, key=lambda e: e.total)


@dataclass
class Plan:
    model_name: str
    parameters: int
    vocab_size: int
    padded_vocab_size: int
    tensor_parallel: int
    pipeline_parallel: int
    virtual_pipeline: int | None
    data_parallel: int
    sequence_parallel: bool
    num_nodes: int
    devices_per_node: int
    micro_batch_size: int
    global_batch_size: int
    num_microbatches: int
    seq_length: int
    precision: str
    recompute: str
    flops_per_iteration: float
    memory: MemoryEstimate
    stages: list[str]

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.devices_per_node

    def render(self) -> str:
        mem = self.memory
        vp = f" (virtual {self.virtual_pipeline})" if self.virtual_pipeline else ""
        rows = [
            ("parameters", f"{human_count(self.parameters)} ({self.parameters:,}; vocabulary {self.vocab_size} "
                           f"padded to {self.padded_vocab_size})"),
            ("layout", f"TP {self.tensor_parallel} x PP {self.pipeline_parallel}{vp} x DP {self.data_parallel} "
                       f"= {self.world_size} device{'s' if self.world_size > 1 else ''} "
                       f"({self.num_nodes} node{'s' if self.num_nodes > 1 else ''} x {self.devices_per_node}), "
                       f"sequence parallel {'on' if self.sequence_parallel else 'off'}"),
            ("batch", f"micro {self.micro_batch_size} x DP {self.data_parallel} x {self.num_microbatches} "
                      f"microbatches = global {self.global_batch_size} sequences of {self.seq_length} tokens "
                      f"({human_count(self.global_batch_size * self.seq_length)} tokens/step)"),
            ("compute", f"precision {self.precision}, recompute {self.recompute}, "
                        f"{self.flops_per_iteration / 1e15:.4g} PFLOP per step"),
            ("memory/device", f"{mem.total / GiB:.2f} GiB = weights {mem.weights / GiB:.2f} + gradients "
                              f"{mem.gradients / GiB:.2f} + optimizer {mem.optimizer / GiB:.2f} + activations "
                              f"{mem.activations / GiB:.2f} (busiest pipeline stage)"),
            ("stages", " -> ".join(self.stages)),
        ]
        return "\n".join([f"Plan for {self.model_name}:"] + [f"  {k:<14} {v}" for k, v in rows])


def human_count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def build_plan(cfg: DictConfig, vocab_size: int | None = None) -> Plan:
    """The plan of a validated config. vocab_size: the tokenizer's, when already known."""
    m = cfg.model
    vocab = vocab_size or configured_vocab_size(m)
    padded = padded_vocab_size(m, vocab)
    dp = data_parallel_size(cfg)
    granularity = m.activations_checkpoint_granularity
    recompute = "none" if granularity is None else granularity
    if granularity == "full":
        recompute += f" ({m.activations_checkpoint_method}, {m.activations_checkpoint_num_layers} layers)"
    return Plan(
        model_name=m.name,
        parameters=count_parameters(m, padded),
        vocab_size=vocab,
        padded_vocab_size=padded,
        tensor_parallel=m.tensor_model_parallel_size,
        pipeline_parallel=m.pipeline_model_parallel_size,
        virtual_pipeline=m.virtual_pipeline_model_parallel_size,
        data_parallel=dp,
        sequence_parallel=m.sequence_parallel,
        num_nodes=cfg.trainer.num_nodes,
        devices_per_node=cfg.trainer.devices,
        micro_batch_size=m.micro_batch_size,
        global_batch_size=m.global_batch_size,
        num_microbatches=microbatch_count(m.global_batch_size, m.micro_batch_size, dp),
        seq_length=m.encoder_seq_length,
        precision=str(cfg.trainer.precision),
        recompute=recompute,
        flops_per_iteration=forward_flops_per_token(m, m.encoder_seq_length, padded).model_flops(
            m.global_batch_size * m.encoder_seq_length),
        memory=estimate_memory(cfg, padded),
        stages=list(cfg.stages),
    )


@dataclass
class Machine:
    """What this machine offers a run."""

    gpus: int
    gpu_memory: float  # bytes per GPU (0 without GPUs)
    cpu_memory: float  # bytes
    in_cluster_job: bool = False  # started by a cluster launcher on each node (MASTER_ADDR set)

    @staticmethod
    def detect() -> "Machine":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        gpu_memory = torch.cuda.get_device_properties(0).total_memory if gpus else 0
        cpu_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return Machine(gpus=gpus, gpu_memory=gpu_memory, cpu_memory=cpu_memory,
                       in_cluster_job="MASTER_ADDR" in os.environ)


def uses_gpu(cfg: DictConfig, machine: Machine) -> bool:
    return cfg.trainer.accelerator == "gpu" or (cfg.trainer.accelerator == "auto" and machine.gpus > 0)


def check_resources(plan: Plan, cfg: DictConfig, machine: Machine) -> str | None:
    """Why this machine cannot run the plan's training layout, in one line; None when it can."""
    gpu = uses_gpu(cfg, machine)
    where = f"{machine.gpus} GPU(s)" if machine.gpus else "no GPU"
    if plan.num_nodes > 1 and not machine.in_cluster_job:
        return (f"{plan.model_name} needs {plan.world_size} devices ({plan.num_nodes} nodes x "
                f"{plan.devices_per_node}; TP {plan.tensor_parallel} x PP {plan.pipeline_parallel} x "
                f"DP {plan.data_parallel}) but this machine is one node with {where}: launch on a cluster, "
                f"or pass dry_run=true to see the plan only")
    if cfg.trainer.accelerator == "gpu" and machine.gpus == 0:
        return "trainer.accelerator=gpu but this machine has no CUDA GPU: use trainer.accelerator=cpu or auto"
    m = cfg.model
    if not gpu and m.attention_backend in ("cudnn", "efficient"):
        return (f"model.attention_backend={m.attention_backend} needs a CUDA GPU and this run is on the CPU: "
                "use auto, flash or math")
    if gpu and m.attention_backend == "flash" and str(cfg.trainer.precision) == "32":
        return ("model.attention_backend=flash runs in half precision on a GPU: set trainer.precision=bf16-mixed "
                "or use attention_backend=auto")
    if not gpu and m.fp8 == "transformer_engine":
        return "model.fp8=transformer_engine needs a CUDA GPU: use model.fp8=torchao (emulated on the CPU) or null"
    if gpu and plan.devices_per_node > machine.gpus:
        return (f"trainer.devices={plan.devices_per_node} but this machine has {machine.gpus} GPU(s): "
                "lower trainer.devices (and the parallel sizes), or pass dry_run=true to see the plan only")
    if gpu and plan.memory.total > machine.gpu_memory:
        return (f"the estimate of {plan.memory.total / GiB:.1f} GiB per GPU exceeds this GPU's "
                f"{machine.gpu_memory / GiB:.1f} GiB: raise tensor/pipeline parallel sizes, lower "
                "model.micro_batch_size or enable model.activations_checkpoint_granularity")
    if not gpu and plan.memory.total * plan.devices_per_node > machine.cpu_memory:
        return (f"the estimate of {plan.memory.total * plan.devices_per_node / GiB:.1f} GiB exceeds this "
                f"machine's {machine.cpu_memory / GiB:.1f} GiB of memory: pick a smaller model or micro batch")
    return None

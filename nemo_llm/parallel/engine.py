"""The parallel engine: parallelize_gpt() applies TP/SP -> fp8 -> recompute -> compile -> FSDP to the
stages of this rank, and GPTEngine runs the forward and backward of one global batch and the gradient clipping
that Megatron's train_step does, for any layout from one process to pp x dp x tp.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel
from torch.nn.attention import SDPBackend, sdpa_kernel

from nemo_llm.models.gpt.cross_entropy import linear_cross_entropy
from nemo_llm.models.gpt.model import GPTModel, gpt_loss
from nemo_llm.parallel.data_parallel import all_reduce_gradients, apply_fsdp, local
from nemo_llm.parallel.float8 import apply_fp8, fp8_context
from nemo_llm.parallel.loss_scaler import DynamicLossScaler
from nemo_llm.parallel.pipeline_parallel import build_schedule, build_stage, stage_indices, stage_layer_counts
from nemo_llm.parallel.recompute import apply_recompute
from nemo_llm.parallel.state import ParallelState
from nemo_llm.parallel.tensor_parallel import apply_tensor_parallel

# DTensor advises flattening (dp, tp) for the gradient norm's two all-reduces; it is once per step.
logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)


@dataclass
class EngineSettings:
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    pipeline_schedule: str = "1f1b"
    pipeline_layer_split: list[int] | None = None
    precision: str = "32"  # 32 | bf16-mixed | 16-mixed (fp16 with dynamic loss scaling)
    recompute: dict = field(default_factory=lambda: {"granularity": None})
    torch_compile: bool = False
    torch_compile_mode: str | None = None
    attention_backend: str = "auto"  # auto | flash | cudnn | efficient | math
    cross_entropy_loss_fusion: bool = False  # tensor parallel size 1 only (validated)
    cross_entropy_chunk_tokens: int = 4096
    fp8: str | None = None  # None | torchao | transformer_engine


HALF_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def parallelize_gpt(model: GPTModel, state: ParallelState, settings: EngineSettings) -> list[GPTModel]:
    """This rank's model parts (one per virtual pipeline stage), in visible order:
    pipeline split -> tensor/sequence parallel -> fp8 linears -> recompute -> compile -> FSDP."""
    pp, vp = state.pipeline_model_parallel_size, state.virtual_pipeline_model_parallel_size or 1
    counts = stage_layer_counts(model.config.num_layers, pp * vp, settings.pipeline_layer_split)
    if pp * vp == 1:
        parts = [model]
    else:
        parts = [build_stage(model, index, counts) for index in stage_indices(state.pp_rank, pp, vp)]
    for part in parts:
        if state.tensor_model_parallel_size > 1:
            apply_tensor_parallel(part, state.tp_mesh, settings.sequence_parallel)
        apply_fp8(part, settings.fp8)
        apply_recompute(part, **settings.recompute)
        if settings.torch_compile:
            compile_layers(part, settings.torch_compile_mode)
        if settings.use_distributed_optimizer:
            apply_fsdp(part, state.dp_mesh, HALF_DTYPES.get(settings.precision))
    return parts


def compile_layers(part: GPTModel, mode: str | None) -> None:
    """torch.compile each transformer layer in place (the layers repeat, so one compiled graph serves all;
    state_dict keys do not change). After recompute, so its checkpoints are traced into the graphs; before
    FSDP, whose hooks stay outside them."""
    for layer in part.decoder.layers.values():
        layer.compile(mode=mode)


class GPTEngine(nn.Module):
    """Holds this rank's parts (so Lightning sees their parameters) and runs a training step."""

    def __init__(self, model: GPTModel, state: ParallelState, settings: EngineSettings, num_microbatches: int,
                 device: torch.device):
        super().__init__()
        self.state = state
        self.settings = settings
        self.num_microbatches = num_microbatches
        self.parts = nn.ModuleList(parallelize_gpt(model, state, settings))
        self.tensor_parallel = state.tensor_model_parallel_size > 1
        pp, vp = state.pipeline_model_parallel_size, state.virtual_pipeline_model_parallel_size or 1
        self.stages = stage_indices(state.pp_rank, pp, vp)
        self.num_stages = pp * vp
        self.loss_scaler = DynamicLossScaler() if settings.precision == "16-mixed" else None
        self.schedule = None
        if self.num_stages > 1 and settings.cross_entropy_loss_fusion and self.holds_last_stage:
            # The last stage hands its hidden states to the loss, which applies the output layer in chunks.
            self.parts[-1].forward = self.parts[-1].hidden_states
        if self.num_stages > 1:
            self.schedule = build_schedule(self.parts, self.stages, self.num_stages, num_microbatches,
                                           self._scaled_loss, device, state.pp_mesh.get_group(),
                                           settings.pipeline_schedule)
        # Half precision by autocast unless FSDP computes in it already (MixedPrecisionPolicy).
        self.compute_dtype = HALF_DTYPES.get(settings.precision)
        self.autocast = self.compute_dtype is not None and not settings.use_distributed_optimizer
        self.device = device
        self.skipped_step = False  # the last forward_backward found inf/NaN gradients (fp16)

    def _loss_context(self):
        # loss_parallel must enclose forward and backward, once per step (it cannot be re-entered).
        return loss_parallel() if self.tensor_parallel else nullcontext()

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.compute_dtype) if self.autocast else nullcontext()

    def _kernels(self):
        """The attention kernel (model.attention_backend) and fp8 context forward runs under."""
        stack = ExitStack()
        backend = SDPA_BACKENDS.get(self.settings.attention_backend)
        if backend is not None:
            stack.enter_context(sdpa_kernel(backend))
        stack.enter_context(fp8_context(self.settings.fp8))
        return stack

    def _microbatch_loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss of one microbatch through the single stage (no pipeline)."""
        part = self.parts[0]
        if self.settings.cross_entropy_loss_fusion:
            return part(tokens, labels=labels, loss_chunk_tokens=self.settings.cross_entropy_chunk_tokens)
        return gpt_loss(part(tokens), labels)

    @property
    def _scale(self) -> float:
        return self.loss_scaler.scale if self.loss_scaler else 1.0

    def _scaled_loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The pipeline's loss of one microbatch: output is the last stage's logits, or its hidden states
        with the fused loss."""
        if self.settings.cross_entropy_loss_fusion:
            loss = linear_cross_entropy(output, self.parts[-1].output_layer.weight, labels,
                                        self.settings.cross_entropy_chunk_tokens)
        else:
            loss = gpt_loss(output, labels)
        return loss * self._scale

    @property
    def holds_last_stage(self) -> bool:
        return self.num_stages - 1 in self.stages

    @property
    def holds_first_stage(self) -> bool:
        return 0 in self.stages

    def forward_backward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Forward and backward of this data-parallel rank's share of a global batch (all its
        microbatches, gradients averaged over them); returns the mean loss over the whole global
        batch, the same on every rank."""
        with self._loss_context(), self._autocast(), self._kernels():
            if self.schedule is None:
                loss_sum = torch.zeros((), device=self.device)
                chunks = zip(tokens.chunk(self.num_microbatches), labels.chunk(self.num_microbatches))
                for i, (tok, lab) in enumerate(chunks):
                    if self.settings.use_distributed_optimizer:
                        # Reduce-scatter gradients once, after the last microbatch, not after each.
                        self.parts[0].set_requires_gradient_sync(i == self.num_microbatches - 1)
                    loss = self._microbatch_loss(tok, lab)
                    (loss * (self._scale / self.num_microbatches)).backward()
                    loss_sum += _full(loss).detach()
                loss = loss_sum / self.num_microbatches
            else:
                loss = self._run_pipeline(self.schedule.step, tokens, labels)
        self._finish_gradients()
        if self.loss_scaler is not None:
            self._unscale_and_check()
        return self._reduce_loss(loss)

    @torch.no_grad()
    def _unscale_and_check(self) -> None:
        """Divide gradients by the loss scale; on inf/NaN anywhere, drop them all (the optimizer then
        changes nothing this step) and lower the scale."""
        found = torch.zeros((), device=self.device)
        for param in self.parameters():
            if param.grad is not None:
                grad = local(param.grad)
                grad.div_(self._scale)
                found = torch.maximum(found, (~torch.isfinite(grad)).any().float())
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
        self.skipped_step = bool(found.item())
        self.loss_scaler.update(self.skipped_step)
        if self.skipped_step:
            for param in self.parameters():
                param.grad = None

    @torch.no_grad()
    def evaluate_loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss of one batch without gradients (the pipeline runs forward only), on every rank."""
        with self._loss_context(), self._autocast(), self._kernels():
            if self.schedule is None:
                chunks = zip(tokens.chunk(self.num_microbatches), labels.chunk(self.num_microbatches))
                loss = torch.stack([_full(self._microbatch_loss(tok, lab)) for tok, lab in chunks]).mean()
            else:
                loss = self._run_pipeline(self.schedule.eval, tokens, labels)
        return self._reduce_loss(loss)

    def _run_pipeline(self, run, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """schedule.step or schedule.eval with the inputs this rank's stages take; returns the mean
        unscaled microbatch loss on the last stage and zero elsewhere."""
        losses: list[torch.Tensor] = []
        inputs = (tokens,) if self.holds_first_stage else ()
        run(*inputs, target=labels if self.holds_last_stage else None, losses=losses)
        if not losses:
            return torch.zeros((), device=self.device)
        return torch.stack([_full(x).detach() for x in losses]).mean() / self._scale

    def _finish_gradients(self) -> None:
        state = self.state
        if not self.settings.use_distributed_optimizer:
            all_reduce_gradients(self.parameters(), state.dp_mesh.get_group())
        if state.embedding_group is not None and self.parts[0].config.share_embeddings_and_output_weights:
            shared = [self.parts[0].embedding.word_embeddings.weight] if self.holds_first_stage else []
            if self._tied_output_copy is not None:
                shared.append(self._tied_output_copy)
            for param in shared:
                if param.grad is None:
                    continue
                if isinstance(param.grad, DTensor) and param.grad.placements != param.placements:
                    # A vocab-sharded embedding's gradient comes back replicated; shard it like its
                    # parameter so both stages all-reduce tensors of the same shape.
                    param.grad = param.grad.redistribute(placements=param.placements)
                dist.all_reduce(local(param.grad), group=state.embedding_group)

    def _reduce_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The last stage's loss, averaged over data-parallel ranks, on every rank."""
        state = self.state
        loss = loss.float().clone()
        if state.pipeline_model_parallel_size > 1:
            dist.all_reduce(loss, group=state.pp_mesh.get_group())  # only the last stage is non-zero
        if state.data_parallel_size > 1:
            dist.all_reduce(loss, group=state.dp_mesh.get_group())
            loss /= state.data_parallel_size
        return loss

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Global L2 norm of all gradients across tp, pp and dp (before clipping); scales them to
        max_norm when above it (0: never). Each parameter is counted once: sharded DTensor norms
        are combined over their mesh, replicated parameters are not summed over their replicas."""
        # One norm per (mesh, placements) group of gradients, so one collective per group, not per tensor.
        groups: dict[tuple, list[torch.Tensor]] = {}
        for param in self._unique_parameters():
            if param.grad is not None:
                grad = param.grad
                key = (id(grad.device_mesh), grad.placements) if isinstance(grad, DTensor) else ("local",)
                groups.setdefault(key, []).append(grad)
        squares = torch.zeros((), device=self.device, dtype=torch.float32)
        for grads in groups.values():
            norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
            squares += _full(torch.linalg.vector_norm(norms)) ** 2
        if self.state.pipeline_model_parallel_size > 1:
            dist.all_reduce(squares, group=self.state.pp_mesh.get_group())
        total = squares.sqrt()
        if max_norm > 0:
            # On the device, with no .item(): a host sync here would stall the GPU before the optimizer.
            # Multiplying by exactly 1.0 when the norm is below max_norm changes nothing.
            coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
            grads = [local(p.grad) for p in self.parameters() if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, coefficient.to(grads[0].device))
        return total

    @property
    def _tied_output_copy(self) -> nn.Parameter | None:
        """The last pipeline stage's copy of tied word embeddings (see build_stage), if this rank holds it."""
        if (self.state.embedding_group is None or not self.holds_last_stage
                or not self.parts[-1].config.share_embeddings_and_output_weights):
            return None
        return self.parts[-1].output_layer.weight

    def _unique_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters, leaving out the last stage's copy of tied embeddings (counted on the first stage)."""
        skip = self._tied_output_copy
        for param in self.parameters():
            if param is not skip:
                yield param


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


__all__ = ["EngineSettings", "GPTEngine", "parallelize_gpt"]

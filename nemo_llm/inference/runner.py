"""The model's forward for inference at any tensor x pipeline layout.

Every rank of a model replica calls the same method with the same arguments (SPMD) and gets the
same result. Pipeline stages run one after another: each receives the hidden states of the
previous stage and sends its own to the next; the last stage turns logits into what the caller
asked for (per-token log-probabilities, or the next token) and broadcasts that small result back.
Tensor-parallel shards gather the vocabulary-sharded logits only on the last stage. Data
parallelism is the caller's: replicas score or generate different requests (InferenceEngine).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from nemo_llm.models.gpt.model import GPTModel, KVCache
from nemo_llm.parallel.pipeline_parallel import build_stage, stage_layer_counts
from nemo_llm.parallel.state import ParallelState
from nemo_llm.parallel.tensor_parallel import apply_tensor_parallel


class ModelRunner:
    """This rank's part of the model in eval mode (no dropout, no sequence parallelism)."""

    def __init__(self, model: GPTModel, state: ParallelState | None = None,
                 layer_split: Sequence[int] | None = None):
        self.config = model.config
        self.state = state
        tp = state.tensor_model_parallel_size if state else 1
        pp = state.pipeline_model_parallel_size if state else 1
        part = model
        if pp > 1:
            part = build_stage(model, state.pp_rank, stage_layer_counts(model.config.num_layers, pp, layer_split))
        if tp > 1:
            apply_tensor_parallel(part, state.tp_mesh, sequence_parallel=False)
        self.part = part.eval()
        self.is_first_stage = state is None or state.is_first_stage
        self.is_last_stage = state is None or state.is_last_stage
        parameter = next(self.part.parameters())
        self.device = parameter.device
        self.dtype = parameter.dtype
        self._pp_group = state.pp_mesh.get_group() if pp > 1 else None
        self._tp_group = state.tp_mesh.get_group() if tp > 1 else None

    @property
    def max_sequence_length(self) -> int:
        return self.config.max_position_embeddings

    @torch.no_grad()
    def hidden_states(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor | None:
        """tokens [b, s] -> the final hidden states [b, s, h] on the last pipeline stage, None elsewhere."""
        x = tokens
        if not self.is_first_stage:
            x = torch.empty(*tokens.shape, self.config.hidden_size, dtype=self.dtype, device=self.device)
            dist.recv(x, group=self._pp_group, group_src=self.state.pp_rank - 1)
        out = self.part.hidden_states(x, cache)
        if not self.is_last_stage:
            dist.send(out.contiguous(), group=self._pp_group, group_dst=self.state.pp_rank + 1)
            return None
        return out

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits [b, s, V] from last-stage hidden states [b, s, h]; tensor-parallel
        shards gather the vocabulary."""
        out = self.part.output_layer(hidden)
        return out.full_tensor() if isinstance(out, DTensor) else out

    @torch.no_grad()
    def token_logprobs(self, tokens: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(targets[:, i] | tokens[:, :i+1]) [b, s] float32, and whether each target is the argmax
        [b, s] bool, on every rank."""
        hidden = self.hidden_states(tokens)
        logprobs = torch.empty(targets.shape, dtype=torch.float32, device=self.device)
        greedy = torch.empty(targets.shape, dtype=torch.uint8, device=self.device)  # gloo broadcasts no bool
        if hidden is not None:
            # One row at a time: fp32 logits of a whole batch of long sequences would not fit (8 x 2048 x
            # 50k vocabulary is 3.3 GB, and log_softmax doubles it).
            for row in range(tokens.shape[0]):
                logits = self.logits(hidden[row:row + 1]).float()[0]
                logprobs[row] = logits.log_softmax(dim=-1).gather(-1, targets[row, :, None]).squeeze(-1)
                greedy[row] = logits.argmax(dim=-1) == targets[row]
        return self._from_last_stage(logprobs), self._from_last_stage(greedy).bool()

    @torch.no_grad()
    def next_token(self, tokens: torch.Tensor, cache: KVCache | None,
                   choose: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run tokens [b, s] (after the cached ones), pick the next token of each row with choose(logits
        [b, V] float32) -> ids [b]; returns (ids [b], their log-probabilities [b]) on every rank."""
        hidden = self.hidden_states(tokens, cache)
        ids = torch.empty(tokens.shape[0], dtype=torch.long, device=self.device)
        logprobs = torch.empty(tokens.shape[0], dtype=torch.float32, device=self.device)
        if hidden is not None:
            last = self.logits(hidden[:, -1:])[:, 0].float()
            ids = choose(last)
            logprobs = last.log_softmax(dim=-1).gather(-1, ids[:, None]).squeeze(-1)
        return self._from_last_stage(ids), self._from_last_stage(logprobs)

    def _from_last_stage(self, tensor: torch.Tensor) -> torch.Tensor:
        # Tensor-parallel peers computed the same values from the same gathered logits; taking tp
        # rank 0's copy keeps every rank bit-identical even if a kernel were not.
        if self._pp_group is not None:
            dist.broadcast(tensor, group=self._pp_group, group_src=self.state.pipeline_model_parallel_size - 1)
        if self._tp_group is not None:
            dist.broadcast(tensor, group=self._tp_group, group_src=0)
        return tensor

"""InferenceEngine: scoring and text generation on a model at any layout.

Generation batches prompts of different lengths as Megatron does: every row runs from the
shortest prompt's end, and a row whose prompt is longer keeps its own prompt tokens until its
prompt is used up. No padding ever enters the attention, so a prompt gives the same tokens alone
or in any batch, with or without the KV cache.

Under torch.distributed every rank of a model replica makes the same calls with the same arguments;
data-parallel replicas (ParallelState.data_parallel_size > 1) share the requests of score() and
generate() between them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from nemo_llm.models.gpt.model import GPTModel, KVCache
from nemo_llm.parallel.state import ParallelState
from nemo_llm.inference.runner import ModelRunner
from nemo_llm.inference.sampling import SamplingParams, row_generators, sample_next_token
from nemo_llm.tokenizers import Tokenizer

FINISH_EOD, FINISH_STOP, FINISH_LENGTH = "eod", "stop", "length"
# Prompt tokens decoded in front of the generated ones, so that a continuation's first word keeps
# the space a tokenizer folds into its first piece ("▁world" alone decodes to "world").
_DECODE_ANCHOR = 8


@dataclass
class TokenScores:
    """log p(token i | tokens < i) for i = 1 .. n-1 of one sequence, and whether each token was the
    model's argmax there."""

    logprobs: list[float]
    greedy: list[bool]


@dataclass
class TokenEvent:
    """One new token of prompt `index` while streaming. `text` is what this token adds to the output
    (empty while it holds an incomplete character or a possible start of a stop string);
    finish_reason is set on a prompt's last event."""

    index: int
    token_id: int
    text: str
    logprob: float | None = None
    finish_reason: str | None = None


@dataclass
class Generation:
    prompt: str
    text: str  # the continuation only, cut before a stop string; an end-of-document token is not shown
    token_ids: list[int]  # generated ids, up to and including the one that ended generation
    finish_reason: str  # eod | stop | length
    logprobs: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "text": self.text, "token_ids": self.token_ids,
                "finish_reason": self.finish_reason, "logprobs": self.logprobs}


class GenerationTooLongError(ValueError):
    """A prompt plus the tokens to generate does not fit the model's context."""


@dataclass
class _Row:
    """One prompt's progress through a generation batch."""

    index: int  # place in the request: seeds this prompt's sampling
    prompt: str
    prompt_ids: list[int]
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of text already streamed
    finish_reason: str | None = None

    def generation(self, with_logprobs: bool) -> Generation:
        return Generation(self.prompt, self.text, self.generated, self.finish_reason or FINISH_LENGTH,
                          self.logprobs if with_logprobs else None)


class InferenceEngine:
    def __init__(self, runner: ModelRunner, tokenizer: Tokenizer | None = None):
        self.runner = runner
        self.tokenizer = tokenizer
        state = runner.state
        self._dp_size = state.data_parallel_size if state else 1
        self._dp_rank = state.dp_rank if state else 0
        self._dp_group = state.dp_mesh.get_group() if self._dp_size > 1 else None

    @classmethod
    def from_model(cls, model: GPTModel, tokenizer: Tokenizer | None = None, state: ParallelState | None = None,
                   layer_split: Sequence[int] | None = None) -> InferenceEngine:
        """An engine over this rank's share of model (the full model, loaded on every rank)."""
        return cls(ModelRunner(model, state, layer_split), tokenizer)

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu", state: ParallelState | None = None,
             layer_split: Sequence[int] | None = None, dtype: torch.dtype | None = None) -> InferenceEngine:
        """An engine over anything nemo_llm.load accepts (checkpoint, run directory, HF folder), with its
        weights cast to dtype when given (bf16 halves memory and doubles speed on GPUs)."""
        from nemo_llm.convert.load import load

        model, tokenizer = load(path, device)
        if dtype is not None:
            model = model.to(dtype)
        return cls.from_model(model, tokenizer, state, layer_split)

    @property
    def max_sequence_length(self) -> int:
        return self.runner.max_sequence_length

    # --- scoring ---------------------------------------------------------------------------------

    def score(self, sequences: Sequence[Sequence[int]], batch_size: int = 8) -> list[TokenScores]:
        """Per-token log-probabilities of each sequence of 2 to max_sequence_length + 1 tokens (the model
        reads all but the last). Longest first in batches of batch_size, right-padded: causal
        attention keeps padding out of every real position."""
        for i, seq in enumerate(sequences):
            if not 2 <= len(seq) <= self.max_sequence_length + 1:
                raise ValueError(f"sequence {i} has {len(seq)} tokens: scoring needs 2 to "
                                 f"{self.max_sequence_length + 1} (the model's context plus one)")
        return self._data_parallel(partial(self._score_local, batch_size=batch_size), list(sequences))

    def _score_local(self, sequences: list[Sequence[int]], batch_size: int) -> list[TokenScores]:
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        results: list[TokenScores | None] = [None] * len(sequences)
        device = self.runner.device
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = len(sequences[batch[0]])
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :len(sequences[i])] = torch.tensor(sequences[i], dtype=torch.long)
            ids = ids.to(device)
            logprobs, greedy = self.runner.token_logprobs(ids[:, :-1], ids[:, 1:])
            logprobs, greedy = logprobs.double().cpu(), greedy.cpu()
            for row, i in enumerate(batch):
                n = len(sequences[i]) - 1
                results[i] = TokenScores(logprobs[row, :n].tolist(), greedy[row, :n].tolist())
        return results

    # --- generation --------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], params: SamplingParams, use_cache: bool = True) -> list[Generation]:
        """Continue each prompt; one batch (split between data-parallel replicas)."""
        params.check()
        return self._data_parallel(partial(self._generate_local, params=params, use_cache=use_cache),
                                   list(enumerate(prompts)))

    def _generate_local(self, prompts: list[tuple[int, str]], params: SamplingParams,
                        use_cache: bool) -> list[Generation]:
        if not prompts:
            return []
        rows = self._rows(prompts, params)
        for _ in self._steps(rows, params, use_cache):
            pass
        return [row.generation(params.logprobs) for row in rows]

    def stream(self, prompts: Sequence[str], params: SamplingParams, use_cache: bool = True) -> Iterator[TokenEvent]:
        """TokenEvents as tokens are generated, in one batch on one model replica."""
        params.check()
        if self._dp_size > 1:
            raise ValueError("streaming runs on one model replica: use a layout with data parallel size 1")
        rows = self._rows(list(enumerate(prompts)), params)
        for events in self._steps(rows, params, use_cache):
            yield from events

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams,
                     use_cache: bool = True) -> list[list[int]]:
        """Token-level generation without a tokenizer: stops at max_new_tokens or, with stop_on_eod, at the
        tokenizer's end-of-document id (none when there is no tokenizer); stop strings need a tokenizer."""
        params.check()
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        rows = [_Row(i, "", list(ids)) for i, ids in enumerate(prompt_ids)]
        for i, row in enumerate(rows):
            if not row.prompt_ids:
                raise ValueError(f"prompt {i} is empty")
        self._check_fits(rows, params)
        for _ in self._steps(rows, params, use_cache):
            pass
        return [row.generated for row in rows]

    def _rows(self, prompts: list[tuple[int, str]], params: SamplingParams) -> list[_Row]:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: text generation needs one (see nemo_llm.load)")
        rows = [_Row(i, p, self.encode_prompt(p)) for i, p in prompts]
        self._check_fits(rows, params)
        return rows

    def encode_prompt(self, prompt: str) -> list[int]:
        """The token ids generation starts from. An empty prompt starts from end-of-document, the state
        the model saw at every document start."""
        return self.tokenizer.encode(prompt) or [self.tokenizer.eod_id]

    def _check_fits(self, rows: list[_Row], params: SamplingParams) -> None:
        for i, row in enumerate(rows):
            if len(row.prompt_ids) + params.max_new_tokens > self.max_sequence_length:
                raise GenerationTooLongError(
                    f"prompt {i} has {len(row.prompt_ids)} tokens; with max_new_tokens={params.max_new_tokens} that "
                    f"exceeds the model's context of {self.max_sequence_length} tokens")

    def _steps(self, rows: list[_Row], params: SamplingParams, use_cache: bool) -> Iterator[list[TokenEvent]]:
        """Generate for rows in place; yields the events of each step."""
        device = self.runner.device
        lengths = torch.tensor([len(row.prompt_ids) for row in rows], device=device)
        first, total = int(lengths.min()), int(lengths.max()) + params.max_new_tokens
        tokens = torch.zeros(len(rows), total, dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            tokens[i, :len(row.prompt_ids)] = torch.tensor(row.prompt_ids, dtype=torch.long)
        cache = KVCache(total) if use_cache else None
        generators = row_generators(params.seed, [row.index for row in rows], device)
        eod_id = self.tokenizer.eod_id if self.tokenizer is not None and params.stop_on_eod else None
        vocab_size = self.tokenizer.vocab_size if self.tokenizer is not None else None
        if params.max_new_tokens == 0:
            for row in rows:
                row.finish_reason = FINISH_LENGTH
            return
        done_before = 0
        for position in range(first, total):
            context = tokens[:, done_before:position] if use_cache else tokens[:, :position]
            seen = tokens[:, :position]
            choose: Callable = partial(_choose, vocab_size=vocab_size, params=params, seen=seen, generators=generators)
            ids, logprobs = self.runner.next_token(context, cache, choose)
            done_before = position
            started = position >= lengths
            tokens[:, position] = torch.where(started, ids, tokens[:, position])
            events = []
            ids_list, logprob_list, started_list = ids.tolist(), logprobs.tolist(), started.tolist()
            for i, row in enumerate(rows):
                if not started_list[i] or row.finish_reason is not None:
                    continue
                events.append(self._advance(row, ids_list[i], logprob_list[i], params, eod_id))
            yield events
            if all(row.finish_reason is not None for row in rows):
                return

    def _advance(self, row: _Row, token: int, logprob: float, params: SamplingParams,
                 eod_id: int | None) -> TokenEvent:
        row.generated.append(token)
        row.logprobs.append(logprob)
        if token == eod_id:
            row.finish_reason = FINISH_EOD
        elif self.tokenizer is not None:
            row.text = self._continuation(row)
            cut = _first_stop(row.text, params.stop)
            if cut is not None:
                row.text, row.finish_reason = row.text[:cut], FINISH_STOP
        if row.finish_reason is None and len(row.generated) == params.max_new_tokens:
            row.finish_reason = FINISH_LENGTH
        shown = len(row.text) if row.finish_reason else _safe_length(row.text, params.stop)
        delta = row.text[row.emitted:shown] if shown > row.emitted else ""
        row.emitted = max(row.emitted, shown)
        return TokenEvent(row.index, token, delta, logprob if params.logprobs else None, row.finish_reason)

    def _continuation(self, row: _Row) -> str:
        return continuation_text(self.tokenizer, row.prompt_ids, row.generated)

    # --- data parallel -------------------------------------------------------------------------------

    def _data_parallel(self, fn: Callable[[list], list], items: list) -> list:
        """fn over this replica's share of items (every dp_size-th), results gathered in items' order."""
        if self._dp_size == 1:
            return fn(items)
        mine = fn(items[self._dp_rank::self._dp_size])
        gathered: list[list | None] = [None] * self._dp_size
        dist.all_gather_object(gathered, mine, group=self._dp_group)
        results: list = [None] * len(items)
        for rank, part in enumerate(gathered):
            results[rank::self._dp_size] = part
        return results


def continuation_text(tokenizer: Tokenizer, prompt_ids: Sequence[int], generated: Sequence[int]) -> str:
    """The text generated ids add after a prompt, decoded behind the prompt's last tokens so that a
    space the tokenizer folds into the first generated piece is kept."""
    anchor = list(prompt_ids[-_DECODE_ANCHOR:])
    head = tokenizer.decode(anchor)
    full = tokenizer.decode(anchor + list(generated))
    return full[len(head):] if full.startswith(head) else tokenizer.decode(list(generated))


def _choose(logits: torch.Tensor, vocab_size: int | None, **sampling) -> torch.Tensor:
    # Rows of the output layer past the tokenizer's vocabulary are Megatron padding, never tokens.
    return sample_next_token(logits[:, :vocab_size], **sampling)


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string starts in text, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _safe_length(text: str, stops: Sequence[str]) -> int:
    """How much of text can be streamed now: not a trailing incomplete character (U+FFFD from a
    partial UTF-8 sequence), nor a tail that may grow into a stop string."""
    end = len(text.rstrip("\ufffd"))
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):
            if text[end - k:end] == stop[:k]:
                hold = max(hold, k)
                break
    return end - hold

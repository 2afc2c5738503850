"""The lm-evaluation-harness model "nemo_llm": any lm-eval task on anything nemo_llm.load reads.

    nemo-llm-lm-eval --model nemo_llm --model_args path=results/run,batch_size=8 --tasks hellaswag

`import nemo_llm` registers the name with lm-eval (see docs/lm_eval.md). Requests map onto
nemo_llm.evaluation.loglikelihood (continuations and whole documents) and InferenceEngine
generation, so lm-eval scores exactly what the rest of nemo_llm computes.

Under torchrun every process runs the whole evaluation (SPMD, as InferenceEngine expects): each
holds its tensor x pipeline share of the model, data-parallel replicas split the requests inside
the engine, and every process reports itself to lm-eval as rank 0 of 1 (lm-eval 0.4.12 and later
then write results from LOCAL_RANK 0 only).
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.utils import simple_parse_args_string
from tqdm import tqdm

from nemo_llm.convert.load import load
from nemo_llm.evaluation.loglikelihood import encode_pair, loglikelihood, rolling_loglikelihood
from nemo_llm.inference.engine import InferenceEngine, continuation_text
from nemo_llm.inference.runner import ModelRunner
from nemo_llm.inference.sampling import SamplingParams
from nemo_llm.parallel.state import ParallelState, initialize_model_parallel
from nemo_llm.tokenizers import Tokenizer

logger = logging.getLogger(__name__)

# Settings lm-eval passes besides model_args; its defaults (batch size 1, cuda:0) are not the user's choice,
# so model_args win over them.
_LM_EVAL_SETTINGS = ("batch_size", "device")
_GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty"}
# Requests scored per call to the engine (which sorts them by length): progress shows after each.
_REQUESTS_PER_STEP_PER_BATCH = 32


class ContextLimitedEngine(InferenceEngine):
    """An InferenceEngine whose context is max_length tokens (at most the model's): scoring windows, left
    truncation of contexts and the room for generation all use the shorter context."""

    def __init__(self, runner: ModelRunner, tokenizer: Tokenizer | None, max_length: int):
        super().__init__(runner, tokenizer)
        if not 1 <= max_length <= runner.max_sequence_length:
            raise ValueError(f"max_length={max_length} must be between 1 and the model's context of "
                             f"{runner.max_sequence_length} tokens: lower it, or leave it out to use the whole context")
        self._max_length = max_length

    @property
    def max_sequence_length(self) -> int:
        return self._max_length


class NemoLLMLM(LM):
    """lm-eval model over a nemo_llm checkpoint, run directory, import_hf output or Hugging Face folder.

    model_args: path (required); batch_size (sequences per forward pass, default 8); device (default cuda when
    available, else cpu); max_length (tokens of context, default the model's); generation defaults that a
    task's gen_kwargs override: max_gen_toks (256), temperature (1.0), top_k (0: all), top_p (1.0),
    repetition_penalty (1.0), seed (0); under torchrun: tensor_model_parallel_size and
    pipeline_model_parallel_size (default 1; the remaining processes are data-parallel replicas)."""

    def __init__(self, path: str, batch_size: int | str = 8, device: str | None = None,
                 max_length: int | None = None, max_gen_toks: int = 256, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int = 0,
                 tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1):
        super().__init__()
        self.path = str(path)
        self.batch_size = _positive_int("batch_size", batch_size)
        self._device = _device(device)
        state = _parallel_state(int(tensor_model_parallel_size), int(pipeline_model_parallel_size), self._device)
        model, tokenizer = load(self.path, self._device)
        if tokenizer is None:
            raise ValueError(f"path={self.path} has no tokenizer, and lm-eval passes text: put the tokenizer files "
                             "next to the model (see nemo_llm.load)")
        self.tokenizer = tokenizer
        self._model_info = {"model_path": self.path, "model_num_parameters": sum(p.numel() for p in model.parameters()),
                            "model_dtype": str(next(model.parameters()).dtype)}
        runner = ModelRunner(model, state)
        self.engine = ContextLimitedEngine(runner, tokenizer, int(max_length or runner.max_sequence_length))
        self.generation_defaults = SamplingParams(max_new_tokens=int(max_gen_toks), temperature=float(temperature),
                                                  top_k=int(top_k), top_p=float(top_p),
                                                  repetition_penalty=float(repetition_penalty), seed=int(seed))
        self.generation_defaults.check()
        self._show_progress = int(os.environ.get("RANK", "0")) == 0
        self._ignored_gen_kwargs: set[str] = set()  # warned about once

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> NemoLLMLM:
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> NemoLLMLM:
        """model_args, with lm-eval's --batch_size and --device filling in what they leave out."""
        extra = {k: v for k, v in (additional_config or {}).items() if k in _LM_EVAL_SETTINGS and v is not None}
        if "device" in extra and "device" not in arg_dict and not _usable(extra["device"]):
            # lm-eval asks for cuda:0 unless told otherwise, also on machines without a GPU.
            logger.warning("device %s is not available: running on the default device instead", extra["device"])
            del extra["device"]
        return cls(**{**extra, **arg_dict})

    # --- what lm-eval asks for ---------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eod_id

    @property
    def max_length(self) -> int:
        return self.engine.max_sequence_length

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records under "config" in its results."""
        return {**self._model_info, "max_length": self.max_length}

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(context, continuation) -> (log p(continuation | context), whether greedy decoding gives it)."""
        pairs = [encode_pair(self.tokenizer, context, continuation) for context, continuation in
                 (request.args for request in requests)]
        scores = self._in_steps(pairs, lambda part: loglikelihood(self.engine, part, self.batch_size),
                                size=lambda pair: len(pair[0]) + len(pair[1]), desc="loglikelihood")
        return [(score.logprob, score.is_greedy) for score in scores]

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        """(text,) -> log-likelihood of the whole text, scored in windows of max_length tokens."""
        documents = [self.tokenizer.encode(request.args[0]) for request in requests]
        return self._in_steps(documents, lambda part: rolling_loglikelihood(self.engine, part,
                                                                            batch_size=self.batch_size),
                              size=len, desc="loglikelihood_rolling")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """(context, gen_kwargs) -> the continuation, cut before the first `until` string."""
        texts = [""] * len(requests)
        with tqdm(total=len(requests), desc="generate_until", disable=not self._show_progress) as progress:
            for params, members in self._by_settings(requests):
                prompts = {i: self._generation_prompt(requests[i].args[0], params.max_new_tokens) for i in members}
                # A batch runs from its shortest prompt's end: similar lengths together waste the least.
                members.sort(key=lambda i: -len(prompts[i]))
                for batch in _chunks(members, self.batch_size):
                    generated = self.engine.generate_ids([prompts[i] for i in batch], params)
                    for i, ids in zip(batch, generated):
                        texts[i] = self._continuation_text(prompts[i], ids, params.stop)
                    progress.update(len(batch))
        return texts

    # --- helpers -----------------------------------------------------------------------------------

    def _by_settings(self, requests: list[Instance]) -> list[tuple[SamplingParams, list[int]]]:
        """Indices of the requests grouped by their sampling settings, which a generation batch shares."""
        groups: list[tuple[SamplingParams, list[int]]] = []
        for i, request in enumerate(requests):
            params = self.sampling_params(request.args[1])
            members = next((m for p, m in groups if p == params), None)
            if members is None:
                groups.append((params, [i]))
            else:
                members.append(i)
        return groups

    def sampling_params(self, gen_kwargs: dict[str, Any]) -> SamplingParams:
        """A task's gen_kwargs over the model_args defaults. Greedy unless do_sample is true and the temperature
        positive; `until` (a string or a list) adds stop strings to the end-of-document token."""
        unknown = set(gen_kwargs) - _GEN_KWARGS - self._ignored_gen_kwargs
        if unknown:
            logger.warning("ignoring gen_kwargs %s: nemo_llm reads %s", sorted(unknown), sorted(_GEN_KWARGS))
            self._ignored_gen_kwargs |= unknown

        def setting(key: str, default: Any, cast: Callable[[Any], Any]) -> Any:
            value = gen_kwargs.get(key)
            return default if value is None else cast(value)

        defaults = self.generation_defaults
        until = gen_kwargs.get("until") or []
        temperature = setting("temperature", defaults.temperature, float)
        params = SamplingParams(
            max_new_tokens=setting("max_gen_toks", defaults.max_new_tokens, int),
            greedy=not (gen_kwargs.get("do_sample") and temperature > 0),
            temperature=temperature if temperature > 0 else defaults.temperature,  # unused when greedy
            top_k=setting("top_k", defaults.top_k, int), top_p=setting("top_p", defaults.top_p, float),
            repetition_penalty=setting("repetition_penalty", defaults.repetition_penalty, float),
            stop=[until] if isinstance(until, str) else list(until), seed=defaults.seed)
        params.check()
        return params

    def _generation_prompt(self, context: str, max_new_tokens: int) -> list[int]:
        """The context's last tokens that leave room for max_new_tokens; an empty context starts from
        end-of-document, the state the model saw at every document start."""
        room = self.max_length - max_new_tokens
        if room < 1:
            raise ValueError(f"max_gen_toks={max_new_tokens} leaves no room for a prompt in "
                             f"max_length={self.max_length}: lower max_gen_toks (gen_kwargs or model_args)")
        return (self.tokenizer.encode(context) or [self.tokenizer.eod_id])[-room:]

    def _continuation_text(self, prompt_ids: list[int], generated: list[int], stops: Sequence[str]) -> str:
        if generated and generated[-1] == self.tokenizer.eod_id:
            generated = generated[:-1]
        text = continuation_text(self.tokenizer, prompt_ids, generated)
        cuts = [i for i in (text.find(stop) for stop in stops) if i >= 0]
        return text[:min(cuts)] if cuts else text

    def _in_steps(self, items: list, score: Callable[[list], list], size: Callable[[Any], int], desc: str) -> list:
        """score(items) in steps of similar length, longest first, with a progress bar; results in items' order."""
        order = sorted(range(len(items)), key=lambda i: -size(items[i]))
        results: list = [None] * len(items)
        with tqdm(total=len(items), desc=desc, disable=not self._show_progress) as progress:
            for step in _chunks(order, self.batch_size * _REQUESTS_PER_STEP_PER_BATCH):
                for i, result in zip(step, score([items[i] for i in step])):
                    results[i] = result
                progress.update(len(step))
        return results


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _positive_int(name: str, value: int | str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(f"{name}={value!r} must be a positive number of sequences (automatic batch sizes are not "
                         "supported): set --batch_size or model_args batch_size to a number")
    return number


def _usable(device: str) -> bool:
    return not str(device).startswith("cuda") or torch.cuda.is_available()


def _device(device: str | None) -> torch.device:
    """The device to run on; under torchrun on GPUs each process takes its LOCAL_RANK's GPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not _usable(device):
        raise ValueError(f"device={device}: CUDA is not available here; use device=cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return chosen


def _parallel_state(tensor_parallel: int, pipeline_parallel: int, device: torch.device) -> ParallelState | None:
    """This process's place in the model-parallel layout under torchrun; None in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not dist.is_initialized():
        if tensor_parallel * pipeline_parallel > 1:
            raise ValueError(f"tensor_model_parallel_size={tensor_parallel} x pipeline_model_parallel_size="
                             f"{pipeline_parallel} needs as many processes: launch with torchrun --nproc_per_node "
                             f"{tensor_parallel * pipeline_parallel}")
        return None
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    return initialize_model_parallel(tensor_parallel, pipeline_parallel, device_type=device.type)

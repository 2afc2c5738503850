"""Stage inference: text generation from a checkpoint, for a list of prompts (-> inference.output_file)
or as a REST server (inference.serve=true, nemo_llm.inference.server) until SIGINT/SIGTERM. Runs at the
model's tensor x pipeline layout on trainer.devices processes (see docs/serving.md)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from nemo_llm.config import ConfigError
from nemo_llm.config.validation import data_parallel_size
from nemo_llm.errors import NemoLLMError
from nemo_llm.stages.base import Stage, run_on_devices
from nemo_llm.training.checkpoint import checkpoint_or_last


class InferenceError(NemoLLMError):
    """The checkpoint cannot generate text."""


def read_prompts(i: DictConfig) -> list[str]:
    """inference.prompts, then those of inference.prompts_file: a .jsonl file's "prompt" fields, else
    the lines of a text file (blank lines skipped)."""
    prompts = list(i.prompts)
    if not i.prompts_file:
        return prompts
    path = Path(i.prompts_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"inference.prompts_file={path} is not UTF-8 text ({e})") from None
    if path.suffix != ".jsonl":
        return prompts + [line for line in lines if line.strip()]
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"inference.prompts_file={path}, line {number}: not JSON ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ConfigError(f'inference.prompts_file={path}, line {number}: needs a "prompt" string field')
        prompts.append(record["prompt"])
    return prompts


def _check_lengths(engine, prompts: list[str], max_new_tokens: int) -> None:
    """Refuse, before generating anything, a prompt that leaves no room for max_new_tokens."""
    for number, prompt in enumerate(prompts):
        tokens = len(engine.encode_prompt(prompt))
        if tokens + max_new_tokens > engine.max_sequence_length:
            shown = prompt if len(prompt) <= 40 else prompt[:40] + "..."
            raise InferenceError(f"prompt {number} ({shown!r}) has {tokens} tokens; with inference.sampling."
                                 f"max_new_tokens={max_new_tokens} that exceeds the model's context of "
                                 f"{engine.max_sequence_length} tokens: shorten it or lower max_new_tokens")


def _is_first_rank() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _generate_for_prompts(engine, cfg: DictConfig) -> dict | None:
    """Every rank generates (the engine needs all of them); rank 0 writes and prints the results."""
    from nemo_llm.inference import SamplingParams

    i = cfg.inference
    prompts = read_prompts(i)
    params = SamplingParams(**OmegaConf.to_container(i.sampling, resolve=True))
    _check_lengths(engine, prompts, params.max_new_tokens)
    start = time.perf_counter()
    generations = []
    for batch, first in enumerate(range(0, len(prompts), i.batch_size)):
        # A prompt's random stream is seeded by its place in its batch: a seed per batch keeps the
        # prompts at the same place in different batches from drawing the same numbers.
        batch_params = replace(params, seed=params.seed + batch)
        generations += engine.generate(prompts[first:first + i.batch_size], batch_params)
    seconds = time.perf_counter() - start
    if not _is_first_rank():
        return None
    output = Path(i.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(generation.to_dict()) + "\n" for generation in generations)
    for number, generation in enumerate(generations):
        print(f"[{number}] {generation.prompt!r} -> {generation.text!r} ({generation.finish_reason})", flush=True)
    tokens = sum(len(g.token_ids) for g in generations)
    print(f"{len(generations)} generation(s), {tokens} tokens in {seconds:.1f} s -> {output}", flush=True)
    return {"output_file": str(output), "prompts": len(generations), "generated_tokens": tokens,
            "seconds": round(seconds, 3)}


def _serve(engine, cfg: DictConfig) -> dict:
    from nemo_llm.inference import SamplingParams
    from nemo_llm.inference.server import STOP_SIGNALS, ServerLimits, serve

    i, s = cfg.inference, cfg.inference.server
    if dist.is_initialized():
        # The launcher passes a SIGINT/SIGTERM on to every worker, Ctrl-C may send a second one: serve()
        # acts on the first, and any that come after it must not interrupt the shutdown.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
    defaults = SamplingParams(**OmegaConf.to_container(i.sampling, resolve=True))
    return serve(engine, defaults, ServerLimits(s.max_prompts, s.max_new_tokens, s.max_request_bytes), s.host, s.port)


def _inference_worker(config_yaml: str) -> dict | None:
    from nemo_llm.inference.distributed import engine_from_config, model_parallel, stage_checkpoint

    cfg = OmegaConf.create(config_yaml)
    i = cfg.inference
    checkpoint = stage_checkpoint(i, cfg.run_dir)
    with model_parallel(cfg) as state:
        engine = engine_from_config(cfg, checkpoint, state, i.prompt_table, i.default_task)
        if engine.tokenizer is None:
            raise InferenceError(f"{checkpoint} has no tokenizer, so text cannot be generated: use a run directory's "
                                 "checkpoint (its config.yaml names the tokenizer) or an import_hf output")
        if not cfg.inference.serve:
            return _generate_for_prompts(engine, cfg)
        summary = _serve(engine, cfg)
    if state is not None and summary["signal"]:
        # A launcher that passed a signal on no longer collects results: a worker that returned would
        # wait for it to, until killed 30 s later. The server and process group are closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return summary


class InferenceStage(Stage):
    name = "inference"
    runs_model = True

    def check(self, cfg: DictConfig) -> None:
        i = cfg.inference
        if not (i.prompts or i.prompts_file or i.serve):
            raise ConfigError("inference has nothing to do: give inference.prompts=[...] or inference.prompts_file=, "
                              "or set inference.serve=true")
        if i.serve and (i.prompts or i.prompts_file):
            raise ConfigError("inference.serve=true answers HTTP requests, so inference.prompts and "
                              "inference.prompts_file would be ignored: leave them empty, or set inference.serve=false")
        dp = data_parallel_size(cfg)
        if i.serve and dp > 1:
            raise ConfigError(f"inference.serve=true runs one model replica, but the layout's data parallel size is "
                              f"{dp}: set trainer.devices to model.tensor_model_parallel_size x "
                              "model.pipeline_model_parallel_size")
        if i.prompts_file:
            if not Path(i.prompts_file).is_file():
                raise ConfigError(f"inference.prompts_file={i.prompts_file}: no such file")
            read_prompts(i)  # a malformed line fails now, before any stage runs
        from nemo_llm.inference.distributed import check_prompt_table

        check_prompt_table(cfg, self.name)
        checkpoint = checkpoint_or_last(cfg.inference.checkpoint, cfg.run_dir)
        if i.checkpoint and not checkpoint.exists():
            raise ConfigError(f"inference.checkpoint={i.checkpoint}: no such file or directory")
        if not i.checkpoint and not i.prompt_table and "training" not in cfg.stages and not checkpoint.exists():
            raise ConfigError(f"{checkpoint}: no checkpoint there; run the training stage or set inference.checkpoint")

    def run(self, cfg: DictConfig) -> dict:
        from torch.distributed.elastic.multiprocessing.api import SignalException

        try:
            return run_on_devices(_inference_worker, cfg)
        except SignalException as e:
            # Several processes: the launcher took the signal, passed it on to every worker (rank 0 then
            # stopped the server and the others) and waited for them to exit.
            if not cfg.inference.serve:
                raise
            # Rank 0's summary stays in its process: the launcher collects no results after a signal.
            print(f"server stopped by {e.sigval.name}", flush=True)
            return {"signal": e.sigval.name}

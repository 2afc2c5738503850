"""Stage evaluation: a checkpoint's perplexity on the held-out splits and on documents, the MT-NLG
benchmarks and a generated sample -> <run_dir>/eval.json and a printed table.

The data (task records, documents) is read once in this process, so that a missing file or an
unreachable hub fails before any model loads; the model runs in trainer.devices workers at
model.tensor_model_parallel_size x pipeline_model_parallel_size (the rest data parallel), which
all make the same calls (nemo_llm.inference). Global rank 0 writes the results.
"""

from __future__ import annotations

import glob
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from nemo_llm.config import ConfigError
from nemo_llm.config.validation import parse_splits
from nemo_llm.data.blending import parse_data_prefix
from nemo_llm.data.gpt_dataset import build_gpt_datasets
from nemo_llm.data.sources import InputError, build_sources, read_documents
from nemo_llm.errors import NemoLLMError
from nemo_llm.evaluation.harness import TASK_METRICS, evaluate_tasks, format_table
from nemo_llm.evaluation.perplexity import document_perplexity, split_perplexity
from nemo_llm.evaluation.tasks import TaskData, prepare_task
from nemo_llm.inference.distributed import check_prompt_table, engine_from_config, model_parallel, stage_checkpoint
from nemo_llm.inference.engine import InferenceEngine
from nemo_llm.inference.sampling import SamplingParams
from nemo_llm.stages.base import Stage, run_on_devices
from nemo_llm.training.checkpoint import CheckpointError, last_checkpoint_path, read_checkpoint_meta

EVAL_FILE = "eval.json"


class EvaluationError(NemoLLMError, ValueError):
    """An evaluation setting that does not fit the model being evaluated."""


@dataclass
class EvaluationInputs:
    """What the workers evaluate besides the held-out splits, read in the launching process."""

    documents: list[str] = field(default_factory=list)
    tasks: list[TaskData] = field(default_factory=list)
    prompt_records: list[dict[str, Any]] = field(default_factory=list)  # of the learned prompts' tasks


def read_prompt_records(e: DictConfig) -> list[dict[str, Any]]:
    """The first evaluation.prompt_tasks.limit records of each task (0: all) in prompt_tasks.data, when
    evaluation.prompt_table is set."""
    from nemo_llm.prompt_learning.data import read_jsonl

    if not e.prompt_table or not e.prompt_tasks.data:
        return []
    kept, seen = [], Counter()
    for record in read_jsonl(e.prompt_tasks.data):
        seen[record.get("taskname")] += 1
        if not e.prompt_tasks.limit or seen[record.get("taskname")] <= e.prompt_tasks.limit:
            kept.append(record)
    return kept


def checkpoint_step(path: Path) -> int | None:
    """The training step of a checkpoint of ours (or of a run directory's last one); None for other models."""
    if path.is_dir() and last_checkpoint_path(path).exists():
        path = last_checkpoint_path(path)
    try:
        return read_checkpoint_meta(path).get("global_step")
    except CheckpointError:
        return None  # a Hugging Face folder or an import_hf output: no training step


def read_perplexity_documents(p: DictConfig) -> list[str]:
    """The documents of evaluation.perplexity.input (the first max_documents of them, 0: all)."""
    if p.input is None:
        return []
    inputs = [p.input] if isinstance(p.input, str) else list(p.input)
    try:
        documents = read_documents(build_sources(inputs, p.json_key), count=p.max_documents or None)
        return list(documents)
    except InputError as e:
        raise EvaluationError(f"evaluation.perplexity.input: {e}".replace(
            "data_preparation.json_key", "evaluation.perplexity.json_key")) from None


# --- what each worker runs ---------------------------------------------------------------------------

Log = Callable[[str], None]


def _check_engine(cfg: DictConfig, engine: InferenceEngine, checkpoint: Path) -> None:
    if engine.tokenizer is None:
        raise EvaluationError(f"{checkpoint}: no tokenizer goes with this model; evaluate a checkpoint inside its "
                              "run directory or an import_hf output (set evaluation.checkpoint)")
    stride = cfg.evaluation.perplexity.stride
    if stride is not None and stride > engine.max_sequence_length:
        raise EvaluationError(f"evaluation.perplexity.stride={stride} exceeds the model's context of "
                              f"{engine.max_sequence_length} tokens: lower it or set it to null")
    prompt_tokens = len(engine.encode_prompt(cfg.evaluation.generate.prompt))
    if prompt_tokens >= engine.max_sequence_length:
        raise EvaluationError(f"evaluation.generate.prompt has {prompt_tokens} tokens, which fill the model's context "
                              f"of {engine.max_sequence_length}: shorten it")


def _held_out_perplexity(cfg: DictConfig, engine: InferenceEngine, log: Log) -> dict[str, Any]:
    """{split: metrics or None} for evaluation.splits, {} when the training corpus is not there."""
    e, m = cfg.evaluation, cfg.model
    if not e.splits:
        return {}
    prefix = m.data.data_prefix
    if prefix is None or not all(Path(f"{p}.idx").is_file() for _, p in parse_data_prefix(prefix)):
        log(f"held-out splits skipped: model.data.data_prefix={prefix} has no prepared corpus")
        return {}
    # Samples as training saw them, cut to the evaluated model's context when that is shorter.
    seq_length = min(m.encoder_seq_length, engine.max_sequence_length)
    datasets = build_gpt_datasets(prefix, parse_splits(m.data.splits_string), seq_length, cfg.seed,
                                  splits=tuple(e.splits), index_mapping_dir=m.data.index_mapping_dir)
    result: dict[str, Any] = {}
    for split in e.splits:
        if split not in datasets:
            result[split] = None  # the split has no documents (model.data.splits_string)
            continue
        metrics = split_perplexity(engine, datasets[split], e.max_batches * m.micro_batch_size, e.batch_size)
        result[split] = {**metrics, "batches": math.ceil(metrics["samples"] / m.micro_batch_size)}
        log(f"{split}: loss {metrics['loss']:.4f} perplexity {metrics['perplexity']:.2f} "
            f"over {metrics['tokens']} tokens")
    return result


def _document_perplexity(cfg: DictConfig, engine: InferenceEngine, documents: list[str], log: Log) -> dict[str, Any]:
    p = cfg.evaluation.perplexity
    result = {"input": OmegaConf.to_container(p)["input"], "stride": p.stride or engine.max_sequence_length,
              **document_perplexity(engine, documents, p.stride, cfg.evaluation.batch_size)}
    log(f"documents: token perplexity {result['token_perplexity']:.2f} over {result['tokens']} tokens")
    return result


def _sample(cfg: DictConfig, engine: InferenceEngine, log: Log) -> dict[str, Any]:
    """A continuation of evaluation.generate.prompt; max_new_tokens is cut to what fits the context."""
    g = OmegaConf.to_container(cfg.evaluation.generate, resolve=True)
    prompt = g.pop("prompt")
    g["max_new_tokens"] = min(g["max_new_tokens"], engine.max_sequence_length - len(engine.encode_prompt(prompt)))
    generation = engine.generate([prompt], SamplingParams(**g))[0]
    log(f"sample: {prompt + generation.text!r}")
    return {"prompt": prompt, "text": prompt + generation.text, "continuation": generation.text,
            "finish_reason": generation.finish_reason, "logprobs": generation.logprobs, "sampling": g}


def evaluation_worker(config_yaml: str, inputs: EvaluationInputs) -> dict:
    """Everything evaluation computes, on one rank; global rank 0 writes eval.json and prints the table."""
    cfg = OmegaConf.create(config_yaml)
    e, m = cfg.evaluation, cfg.model
    checkpoint = stage_checkpoint(e, cfg.run_dir)
    with model_parallel(cfg) as state:
        is_writer = state is None or dist.get_rank() == 0
        log: Log = partial(print, flush=True) if is_writer else (lambda _: None)
        engine = engine_from_config(cfg, checkpoint, state, e.prompt_table)
        _check_engine(cfg, engine, checkpoint)
        result: dict[str, Any] = {
            "checkpoint": str(checkpoint), "step": checkpoint_step(checkpoint),
            "layout": {"tensor_model_parallel_size": m.tensor_model_parallel_size,
                       "pipeline_model_parallel_size": m.pipeline_model_parallel_size,
                       "data_parallel_size": state.data_parallel_size if state else 1}}
        result.update(_held_out_perplexity(cfg, engine, log))
        if inputs.documents:
            result["perplexity"] = _document_perplexity(cfg, engine, inputs.documents, log)
        if inputs.tasks:
            result["tasks"] = evaluate_tasks(engine, inputs.tasks, e.batch_size, log)
        if inputs.prompt_records:
            from nemo_llm.prompt_learning.inference import task_accuracy

            result["prompt_table"] = e.prompt_table
            result["prompt_tasks"] = task_accuracy(engine, inputs.prompt_records, e.prompt_tasks.max_new_tokens)
        result["generation"] = _sample(cfg, engine, log)
    if is_writer:
        path = Path(cfg.run_dir) / EVAL_FILE
        path.write_text(json.dumps(result, indent=2) + "\n")
        log(format_table(result))
        log(f"results: {path}")
    return result


class EvaluationStage(Stage):
    name = "evaluation"
    runs_model = True

    def check(self, cfg: DictConfig) -> None:
        check_prompt_table(cfg, self.name)
        e = cfg.evaluation
        made_earlier = "prompt_learning" in cfg.stages[:cfg.stages.index(self.name)]
        if e.prompt_table and e.prompt_tasks.data and not Path(e.prompt_tasks.data).is_file() and not made_earlier:
            raise ConfigError(f"evaluation.prompt_tasks.data={e.prompt_tasks.data}: no such file; give jsonl records "
                              "of the prompts' tasks, or null to run the model with the prompts without scoring them")
        p = cfg.evaluation.perplexity
        if p.input is not None:
            for pattern in [p.input] if isinstance(p.input, str) else list(p.input):
                if not glob.glob(str(pattern), recursive=True):
                    raise ConfigError(f"evaluation.perplexity.input: {pattern} matches no file")

    def run(self, cfg: DictConfig) -> dict:
        e = cfg.evaluation
        checkpoint = stage_checkpoint(e, cfg.run_dir)
        if not checkpoint.exists():
            raise CheckpointError(f"{checkpoint}: no checkpoint there; run the training stage or set "
                                  "evaluation.checkpoint")
        inputs = EvaluationInputs(
            documents=read_perplexity_documents(e.perplexity),
            tasks=[prepare_task(name, e.data_dir, e.num_fewshot, e.fewshot_seed, e.limit) for name in e.tasks],
            prompt_records=read_prompt_records(e))
        result = run_on_devices(partial(evaluation_worker, inputs=inputs), cfg)
        summary = {"eval_file": str(Path(cfg.run_dir) / EVAL_FILE)}
        summary.update({split: result.get(split) for split in e.splits})
        if "tasks" in result:
            summary["tasks"] = {name: {k: v for k, v in metrics.items() if k in TASK_METRICS}
                                for name, metrics in result["tasks"].items()}
        if "prompt_tasks" in result:
            summary["prompt_tasks"] = result["prompt_tasks"]
        return summary

"""Measured mode: the auto_configurator's best layouts run for real on this machine.

Training: each layout trains for a few steps through the training stage in a process of its own
(`python -m nemo_llm.autoconfig.measure <config.yaml>`, the same pipeline main.py runs), so that
an out-of-memory error or a crash is recorded and the next layout still runs. The step time is the
median over the steps after the first (which compiles and warms up), the memory the peak of rank 0.

Inference: each layout generates output_length tokens for batch_size prompts of input_length
tokens with the generation engine at its tensor x pipeline layout, on a randomly initialised model
of the configured shape (speed does not depend on the weights).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nemo_llm.autoconfig.estimator import InferenceLayout, TrainingLayout


def layout_overrides(layout: TrainingLayout) -> dict[str, Any]:
    """The model and trainer keys that select a training layout."""
    return {"model": {"tensor_model_parallel_size": layout.tp, "pipeline_model_parallel_size": layout.pp,
                      "virtual_pipeline_model_parallel_size": layout.vp if layout.vp > 1 else None,
                      "pipeline_model_parallel_layer_split": None, "sequence_parallel": layout.sp,
                      "micro_batch_size": layout.micro_batch_size,
                      "activations_checkpoint_granularity": None if layout.recompute == "none" else layout.recompute,
                      "activations_checkpoint_method": "uniform" if layout.recompute == "full" else None,
                      "activations_checkpoint_num_layers": 1 if layout.recompute == "full" else None,
                      "use_distributed_optimizer": layout.distributed_optimizer},
            "trainer": {"devices": layout.gpus, "num_nodes": 1}}


def _failure(stderr: str) -> dict[str, str]:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    oom = "out of memory" in stderr.lower() or "outofmemoryerror" in stderr.lower()
    return {"status": "oom" if oom else "error", "error": last[-300:]}


def _run(config: DictConfig, path: Path, timeout_s: int) -> subprocess.CompletedProcess | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(config, resolve=True))
    try:
        return subprocess.run([sys.executable, "-m", "nemo_llm.autoconfig.measure", str(path)], capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def prepare_data(cfg: DictConfig, out_dir: Path, timeout_s: int) -> dict[str, str] | None:
    """Run data_preparation once when the training corpus is not there; a failure dict, or None."""
    from nemo_llm.data.blending import parse_data_prefix

    prefixes = [p for _, p in parse_data_prefix(cfg.model.data.data_prefix)] if cfg.model.data.data_prefix else []
    if prefixes and all(Path(f"{p}.idx").is_file() for p in prefixes):
        return None
    config = OmegaConf.merge(cfg, {"stages": ["data_preparation"], "run_dir": str(out_dir / "data_run")})
    result = _run(config, out_dir / "data_run" / "config.yaml", timeout_s)
    if result is None:
        return {"status": "timeout", "error": f"data preparation took over {timeout_s} s"}
    return None if result.returncode == 0 else _failure(result.stderr)


def measure_training(cfg: DictConfig, layouts: list[TrainingLayout], out_dir: Path, steps: int,
                     timeout_s: int) -> list[dict[str, Any]]:
    """{status, iteration_time_s, tokens_per_s, max_memory_bytes | error} per layout, in order."""
    # Resolved first: the data and tokenizer paths stay those of this run when run_dir changes.
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    failed = prepare_data(cfg, out_dir, timeout_s)
    if failed:
        return [failed for _ in layouts]
    results = []
    for rank, layout in enumerate(layouts, 1):
        run_dir = out_dir / f"layout{rank}"
        config = OmegaConf.merge(cfg, layout_overrides(layout), {
            "stages": ["training"], "run_dir": str(run_dir), "resume": None,
            "trainer": {"max_steps": steps, "val_check_interval": steps, "limit_val_batches": 1,
                        "log_every_n_steps": 1},
            "model": {"optim": {"sched": {"warmup_steps": 1, "constant_steps": 0}}},
            "training": {"progress_bar": False, "tensorboard": False,
                         "checkpoint": {"every_n_train_steps": steps, "save_top_k": 0}}})
        start = time.perf_counter()
        result = _run(config, run_dir / "measure_config.yaml", timeout_s)
        if result is None:
            results.append({"status": "timeout", "error": f"did not finish in {timeout_s} s"})
            continue
        if result.returncode != 0:
            results.append(_failure(result.stderr))
            continue
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        times = [r["step_time_s"] for r in records[1:]] or [r["step_time_s"] for r in records]
        iteration = statistics.median(times)
        results.append({"status": "ok", "iteration_time_s": iteration,
                        "tokens_per_s": layout.global_batch_size * cfg.model.encoder_seq_length / iteration,
                        "max_memory_bytes": max(r.get("max_memory_bytes", 0) for r in records),
                        "wall_s": time.perf_counter() - start})
    return results


def _inference_worker(config_yaml: str, layout: tuple[int, int, int], lengths: tuple[int, int]) -> dict[str, float]:
    """Time one batch on this rank's share of a random model of the configured shape."""
    import torch

    from nemo_llm.inference import InferenceEngine, SamplingParams
    from nemo_llm.inference.distributed import model_parallel
    from nemo_llm.models.gpt import GPTModel
    from nemo_llm.models.gpt.builder import gpt_config_from
    from nemo_llm.plan import configured_vocab_size

    cfg = OmegaConf.create(config_yaml)
    tp, pp, batch = layout
    input_length, output_length = lengths
    torch.manual_seed(cfg.seed)
    model = GPTModel(gpt_config_from(OmegaConf.to_container(cfg.model, resolve=True),
                                     configured_vocab_size(cfg.model))).eval()
    with model_parallel(cfg) as state:
        engine = InferenceEngine.from_model(model, None, state)
        prompts = torch.randint(0, configured_vocab_size(cfg.model), (batch, input_length)).tolist()
        params = SamplingParams(greedy=True, max_new_tokens=output_length, stop_on_eod=False)
        engine.generate_ids([prompts[0][:8]], SamplingParams(greedy=True, max_new_tokens=2, stop_on_eod=False))
        start = time.perf_counter()
        engine.generate_ids(prompts, params)
        latency = time.perf_counter() - start
    return {"latency_s": latency, "tokens_per_s": batch * output_length / latency}


def measure_inference(cfg: DictConfig, layouts: list[InferenceLayout], input_length: int,
                      output_length: int) -> list[dict[str, Any]]:
    """{status, latency_s, tokens_per_s | error} of one replica per layout, in order."""
    from nemo_llm.launcher import launch_local
    from nemo_llm.errors import NemoLLMError

    results = []
    for layout in layouts:
        config = OmegaConf.merge(cfg, {"model": {"tensor_model_parallel_size": layout.tp,
                                                 "pipeline_model_parallel_size": layout.pp},
                                       "trainer": {"devices": layout.tp * layout.pp, "num_nodes": 1}})
        args = (OmegaConf.to_yaml(config, resolve=True), (layout.tp, layout.pp, layout.batch_size),
                (input_length, output_length))
        try:
            if layout.tp * layout.pp == 1:
                timing = _inference_worker(*args)
            else:
                timing = launch_local(_inference_worker, args, layout.tp * layout.pp)[0]
            results.append({"status": "ok", **timing})
        except (NemoLLMError, RuntimeError, ValueError) as e:
            results.append({"status": "oom" if "out of memory" in str(e).lower() else "error", "error": str(e)[-300:]})
    return results


def main() -> int:
    """Run the pipeline of a resolved config file (what measure_training writes per layout)."""
    from nemo_llm.config import Config
    from nemo_llm.pipeline import run_pipeline

    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(sys.argv[1]))
    return run_pipeline(cfg)


if __name__ == "__main__":
    sys.exit(main())

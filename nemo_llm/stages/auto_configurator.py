"""Stage auto_configurator: the fastest training (and inference) layouts of cfg.model on
auto_configurator.num_gpus GPUs of a kind, from the estimator (nemo_llm.autoconfig), optionally
confirmed by short real runs on this machine. Writes <output_dir>/estimate.json, candidates.csv,
candidates.png, summary.txt (and inference_candidates.csv)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nemo_llm.config import ConfigError
from nemo_llm.stages.base import Stage

MODES = ("training", "inference", "both")
MEMORY_MODELS = ("nemo_llm", "megatron")


def _outcome(measured: dict[str, Any]) -> dict[str, Any]:
    """How a measured run ended (its numbers are in the candidate's measured_* columns)."""
    return {k: measured[k] for k in ("status", "error") if k in measured}


class AutoConfiguratorStage(Stage):
    name = "auto_configurator"

    def check(self, cfg: DictConfig) -> None:
        from nemo_llm.autoconfig.estimator import RECOMPUTE
        from nemo_llm.autoconfig.hardware import HARDWARE

        a = cfg.auto_configurator
        if a.mode not in MODES:
            raise ConfigError(f"auto_configurator.mode={a.mode}: use one of {', '.join(MODES)}")
        if a.gpu not in HARDWARE:
            raise ConfigError(f"auto_configurator.gpu={a.gpu}: unknown; one of {', '.join(HARDWARE)}")
        if a.memory_model not in MEMORY_MODELS:
            raise ConfigError(f"auto_configurator.memory_model={a.memory_model}: use {' or '.join(MEMORY_MODELS)}")
        if a.precision not in ("bf16-mixed", "16-mixed", "32"):
            raise ConfigError(f"auto_configurator.precision={a.precision}: use bf16-mixed, 16-mixed or 32")
        for key in ("num_gpus", "tokens", "memory_fraction", "top_k"):
            if not a[key] > 0:
                raise ConfigError(f"auto_configurator.{key}={a[key]} must be positive")
        if a.tflops_per_gpu is not None and not a.tflops_per_gpu > 0:
            raise ConfigError(f"auto_configurator.tflops_per_gpu={a.tflops_per_gpu} must be positive (or null)")
        bad = [r for r in a.search.recompute if r not in RECOMPUTE]
        if bad:
            raise ConfigError(f"auto_configurator.search.recompute: {', '.join(bad)} unknown; use {', '.join(RECOMPUTE)}")
        if a.measure.top_k < 0 or a.inference.measure_top_k < 0:
            raise ConfigError("auto_configurator.measure.top_k and inference.measure_top_k cannot be negative")
        if a.measure.top_k and a.mode != "inference" and cfg.trainer.num_nodes > 1:
            raise ConfigError("auto_configurator.measure runs on this machine: set trainer.num_nodes=1")

    def run(self, cfg: DictConfig) -> dict:
        from nemo_llm.autoconfig.estimator import Efficiency, largest_model, model_shape
        from nemo_llm.autoconfig.hardware import hardware

        a = cfg.auto_configurator
        out_dir = Path(a.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        hw = hardware(a.gpu)
        shape = model_shape(cfg.model)
        efficiency = Efficiency(dp_overlap=a.dp_overlap)
        result: dict[str, Any] = {"model": cfg.model.name, "gpu": a.gpu, "num_gpus": a.num_gpus, "tokens": a.tokens,
                                  "precision": a.precision, "memory_model": a.memory_model,
                                  "tflops_per_gpu": a.tflops_per_gpu}
        summary: list[str] = []
        if a.mode in ("training", "both"):
            result.update(self._training(cfg, shape, hw, efficiency, out_dir, summary))
            # Narayanan's X counts the recomputed forward (8 FLOPs per parameter and token); the estimate's
            # model TFLOP/s do not (6, as C = 6ND).
            tflops, factor = (a.tflops_per_gpu, 8) if a.tflops_per_gpu else (result.get("model_tflops_per_gpu"), 6)
            if a.max_days and tflops and result.get("fits"):
                result["largest_model"] = {"days": a.max_days, "tflops_per_gpu": tflops,
                                           **largest_model(a.max_days, a.num_gpus, tflops, a.tokens, factor),
                                           "compute_optimal": largest_model(a.max_days, a.num_gpus, tflops, None, factor)}
                summary.append(f"In {a.max_days:g} days on {a.num_gpus} x {a.gpu} at {tflops:.0f} TFLOP/s per GPU: "
                               f"{result['largest_model']['parameters'] / 1e9:.1f}B parameters on {a.tokens:.3g} "
                               f"tokens, or {result['largest_model']['compute_optimal']['parameters'] / 1e9:.1f}B "
                               "compute-optimally (20 tokens per parameter)")
        if a.mode in ("inference", "both"):
            result["inference"] = self._inference(cfg, shape, hw, efficiency, out_dir, summary)
        (out_dir / "estimate.json").write_text(json.dumps(result, indent=2) + "\n")
        text = "\n".join(summary)
        (out_dir / "summary.txt").write_text(text + "\n")
        print(text, flush=True)
        print(f"auto_configurator: {out_dir / 'estimate.json'}", flush=True)
        return {"estimate": str(out_dir / "estimate.json"),
                **{k: result[k] for k in ("layout", "days_to_train", "tokens_per_s") if k in result}}

    def _training(self, cfg: DictConfig, shape, hw, efficiency, out_dir: Path, summary: list[str]) -> dict[str, Any]:
        from nemo_llm.autoconfig.measure import measure_training
        from nemo_llm.autoconfig.report import TRAINING_COLUMNS, plot_training, training_row, training_table, write_csv
        from nemo_llm.autoconfig.search import TrainingSpace, search_training

        a = cfg.auto_configurator
        s = a.search
        space = TrainingSpace(tensor_parallel=list(s.tensor_parallel) if s.tensor_parallel else None,
                              pipeline_parallel=list(s.pipeline_parallel) if s.pipeline_parallel else None,
                              virtual_pipeline=list(s.virtual_pipeline), micro_batch_size=list(s.micro_batch_size),
                              recompute=list(s.recompute), sequence_parallel=list(s.sequence_parallel))
        estimates = search_training(shape, a.num_gpus, hw, a.precision, a.tokens, space, efficiency, a.tflops_per_gpu,
                                    a.memory_model, a.memory_fraction)
        if not estimates:
            raise ConfigError(f"no layout of {cfg.model.name} divides {a.num_gpus} GPUs (heads "
                              f"{shape.num_attention_heads}, layers {shape.num_layers}, global batch "
                              f"{shape.global_batch_size}): change auto_configurator.num_gpus or the search lists")
        fitting = [e for e in estimates if e.fits]
        measured: dict[int, dict[str, Any]] = {}
        if a.measure.top_k and fitting:
            picks = fitting[:a.measure.top_k]
            for i, m in enumerate(measure_training(cfg, [e.layout for e in picks], out_dir / "measure",
                                                   a.measure.steps, a.measure.timeout_s)):
                measured[id(picks[i])] = m
            # Measured layouts first, fastest measured first; failures after the estimates they beat.
            ok = sorted((e for e in picks if measured[id(e)]["status"] == "ok"),
                        key=lambda e: measured[id(e)]["iteration_time_s"])
            estimates = ok + [e for e in estimates if e not in ok]
        rows = [training_row(rank, e, measured.get(id(e))) for rank, e in enumerate(estimates, 1)]
        write_csv(out_dir / "candidates.csv", rows, TRAINING_COLUMNS)
        plot_training(out_dir / "candidates.png", estimates, hw, a.memory_fraction,
                      f"{cfg.model.name} on {a.num_gpus} x {a.gpu}: {len(fitting)} of {len(estimates)} layouts fit")
        best = next((e for e in estimates if e.fits), None)
        summary.append(f"{cfg.model.name} on {a.num_gpus} x {a.gpu}: {len(estimates)} layouts, {len(fitting)} fit in "
                       f"{a.memory_fraction:.0%} of {hw.memory_bytes / 2**30:.0f} GiB")
        summary.append(training_table(rows, a.top_k))
        result: dict[str, Any] = {"candidates": len(estimates), "fitting": len(fitting),
                                  "measured": [{**rows[i], **_outcome(measured[id(e)])}
                                               for i, e in enumerate(estimates) if id(e) in measured]}
        if best is None:
            smallest = min(estimates, key=lambda e: e.memory.total)
            summary.append(f"no layout fits: the smallest needs {smallest.memory.total / 2**30:.1f} GiB per GPU; "
                           "use more GPUs, a GPU with more memory, or a shorter sequence")
            return {**result, **{k: v for k, v in smallest.as_dict().items() if k != "fits"}, "fits": False}
        summary.append(f"best: TP {best.layout.tp} x PP {best.layout.pp} (virtual {best.layout.vp}) x DP "
                       f"{best.layout.dp}, micro batch {best.layout.micro_batch_size}, recompute {best.layout.recompute}, "
                       f"sequence parallel {'on' if best.layout.sp else 'off'}: {best.iteration_time_s:.3g} s/step, "
                       f"{best.tokens_per_s:.4g} tokens/s, {best.days_to_train:.3g} days for {a.tokens:.3g} tokens")
        return {**result, **best.as_dict()}

    def _inference(self, cfg: DictConfig, shape, hw, efficiency, out_dir: Path, summary: list[str]) -> dict[str, Any]:
        from nemo_llm.autoconfig.measure import measure_inference
        from nemo_llm.autoconfig.report import INFERENCE_COLUMNS, inference_row, write_csv
        from nemo_llm.autoconfig.search import search_inference

        a, i = cfg.auto_configurator, cfg.auto_configurator.inference
        estimates = search_inference(shape, a.num_gpus, hw, i.input_length, i.output_length, list(i.batch_sizes),
                                     i.max_latency_s, efficiency, a.memory_fraction)
        usable = [e for e in estimates if e.fits and (i.max_latency_s is None or e.latency_s <= i.max_latency_s)]
        measured: dict[int, dict[str, Any]] = {}
        if i.measure_top_k and usable:
            picks = usable[:i.measure_top_k]
            for e, m in zip(picks, measure_inference(cfg, [e.layout for e in picks], i.input_length, i.output_length)):
                measured[id(e)] = m
        rows = [inference_row(rank, e, measured.get(id(e))) for rank, e in enumerate(estimates, 1)]
        write_csv(out_dir / "inference_candidates.csv", rows, INFERENCE_COLUMNS)
        best = usable[0] if usable else None
        if best is None:
            summary.append("inference: no layout fits" + ("" if i.max_latency_s is None else
                                                         f" within {i.max_latency_s:g} s of latency"))
            return {"candidates": len(estimates), "usable": 0}
        summary.append(f"inference ({i.input_length} in, {i.output_length} out): TP {best.layout.tp} x PP "
                       f"{best.layout.pp}, batch {best.layout.batch_size}, {best.replicas} replicas: latency "
                       f"{best.latency_s:.3g} s, {best.tokens_per_s:.4g} tokens/s")
        return {"candidates": len(estimates), "usable": len(usable), **best.as_dict(),
                "measured": [{**rows[n], **_outcome(measured[id(e)])} for n, e in enumerate(estimates)
                             if id(e) in measured]}

"""What the auto_configurator writes: estimate.json, candidates.csv, a summary table, a plot."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nemo_llm.autoconfig.estimator import InferenceEstimate, TrainingEstimate
from nemo_llm.autoconfig.hardware import GiB, Hardware

TRAINING_COLUMNS = ["rank", "tp", "pp", "vp", "dp", "sp", "micro_batch_size", "recompute", "distributed_optimizer",
                    "fits", "memory_gib", "iteration_time_s", "tokens_per_s", "mfu", "days_to_train",
                    "measured_status", "measured_iteration_time_s", "measured_tokens_per_s", "measured_memory_gib"]


def training_row(rank: int, e: TrainingEstimate, measured: dict[str, Any] | None = None) -> dict[str, Any]:
    lay = e.layout
    row = {"rank": rank, "tp": lay.tp, "pp": lay.pp, "vp": lay.vp, "dp": lay.dp, "sp": lay.sp,
           "micro_batch_size": lay.micro_batch_size, "recompute": lay.recompute,
           "distributed_optimizer": lay.distributed_optimizer, "fits": e.fits,
           "memory_gib": round(e.memory.total / GiB, 3), "iteration_time_s": round(e.iteration_time_s, 6),
           "tokens_per_s": round(e.tokens_per_s, 1), "mfu": round(e.mfu, 4), "days_to_train": round(e.days_to_train, 3)}
    measured = measured or {}
    row.update({"measured_status": measured.get("status", ""),
                "measured_iteration_time_s": measured.get("iteration_time_s", ""),
                "measured_tokens_per_s": measured.get("tokens_per_s", ""),
                "measured_memory_gib": round(measured["max_memory_bytes"] / GiB, 3)
                if measured.get("max_memory_bytes") else ""})
    return row


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def training_table(rows: Sequence[dict[str, Any]], top_k: int) -> str:
    header = ["#", "TP", "PP", "VP", "DP", "SP", "MBS", "recompute", "GiB/GPU", "s/step", "tokens/s", "MFU", "days",
              "measured s/step"]
    lines = [header]
    for r in rows[:top_k]:
        lines.append([str(r["rank"]), str(r["tp"]), str(r["pp"]), str(r["vp"]), str(r["dp"]), "on" if r["sp"] else "off",
                      str(r["micro_batch_size"]), r["recompute"], f"{r['memory_gib']:.1f}", f"{r['iteration_time_s']:.4g}",
                      f"{r['tokens_per_s']:.4g}", f"{r['mfu']:.1%}", f"{r['days_to_train']:.4g}",
                      str(r["measured_iteration_time_s"] or r["measured_status"] or "-")])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)


INFERENCE_COLUMNS = ["rank", "tp", "pp", "batch_size", "replicas", "fits", "memory_gib", "prefill_s", "decode_step_s",
                     "latency_s", "tokens_per_s", "measured_latency_s", "measured_tokens_per_s"]


def inference_row(rank: int, e: InferenceEstimate, measured: dict[str, Any] | None = None) -> dict[str, Any]:
    measured = measured or {}
    return {"rank": rank, "tp": e.layout.tp, "pp": e.layout.pp, "batch_size": e.layout.batch_size,
            "replicas": e.replicas, "fits": e.fits, "memory_gib": round(e.memory_bytes_per_gpu["total"] / GiB, 3),
            "prefill_s": round(e.prefill_s, 6), "decode_step_s": round(e.decode_step_s, 6),
            "latency_s": round(e.latency_s, 5), "tokens_per_s": round(e.tokens_per_s, 1),
            "measured_latency_s": measured.get("latency_s", ""), "measured_tokens_per_s": measured.get("tokens_per_s", "")}


def plot_training(path: Path, estimates: Sequence[TrainingEstimate], hw: Hardware, memory_fraction: float,
                  title: str) -> None:
    """Predicted tokens/s against memory per GPU, one point per layout; the memory limit as a line."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for fits, colour, label in ((False, "#bbbbbb", "does not fit"), (True, "#1f77b4", "fits")):
        points = [e for e in estimates if e.fits == fits]
        ax.scatter([e.memory.total / GiB for e in points], [e.tokens_per_s for e in points], s=10, c=colour,
                   label=f"{label} ({len(points)})")
    if estimates and estimates[0].fits:
        best = estimates[0]
        ax.scatter([best.memory.total / GiB], [best.tokens_per_s], s=80, marker="*", c="#d62728", label="best")
    ax.axvline(hw.memory_bytes * memory_fraction / GiB, color="#d62728", linestyle="--", linewidth=1,
               label=f"{memory_fraction:.0%} of {hw.name}")
    ax.set_xscale("log")
    ax.set_xlabel("memory per GPU (GiB)")
    ax.set_ylabel("predicted tokens/s")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""Fit the estimator's efficiency model to published A100 training runs and print its error on each.

Calibration set: Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM"), Table 1: ten GPT models on 32 to 3072 A100s with full activation
recomputation, achieved hardware TFLOP/s per GPU. Held out for validation: Korthikanti et al. 2022,
Table 5 (selective recompute + sequence parallelism), the NeMo launcher's 5B convergence run and the
Megatron-LM README's GPT-3 175B iteration time.

    python scripts/calibrate_estimator.py            # fit, then the error of every published figure
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_llm.autoconfig.estimator import Efficiency, TrainingLayout, estimate_training  # noqa: E402
from nemo_llm.autoconfig.hardware import HARDWARE  # noqa: E402

A100 = HARDWARE["a100_80gb"]


def gpt(layers: int, hidden: int, heads: int, seq: int = 2048, vocab: int = 51200, batch: int = 1) -> SimpleNamespace:
    """A GPT-3 style shape as the papers describe it (vocabulary already a multiple of 128 x 8)."""
    return SimpleNamespace(num_layers=layers, hidden_size=hidden, ffn_hidden_size=4 * hidden, num_attention_heads=heads,
                           num_query_groups=None, activation="gelu", bias=True, normalization="layernorm",
                           position_embedding_type="learned_absolute", max_position_embeddings=seq,
                           encoder_seq_length=seq, share_embeddings_and_output_weights=True,
                           make_vocab_size_divisible_by=128, global_batch_size=batch,
                           cross_entropy_loss_fusion=False, cross_entropy_chunk_tokens=4096,
                           tokenizer=SimpleNamespace(library="sentencepiece", vocab_size=vocab))


@dataclass
class Published:
    source: str
    shape: SimpleNamespace
    layout: TrainingLayout
    measure: str  # what the source reports: "hardware_tflops" per GPU, "iteration_s" or "tokens_per_s"
    value: float


def narayanan_table1() -> list[Published]:
    rows = [  # (heads, hidden, layers, t, p, gpus, batch, achieved TFLOP/s per GPU)
        (24, 2304, 24, 1, 1, 32, 512, 137), (32, 3072, 30, 2, 1, 64, 512, 138), (32, 4096, 36, 4, 1, 128, 512, 142),
        (48, 6144, 40, 8, 1, 256, 1024, 135), (64, 8192, 48, 8, 2, 512, 1536, 138),
        (80, 10240, 60, 8, 4, 1024, 1792, 140), (96, 12288, 80, 8, 8, 1536, 2304, 148),
        (128, 16384, 96, 8, 16, 1920, 2160, 155), (128, 20480, 105, 8, 35, 2520, 2520, 163),
        (160, 25600, 128, 8, 64, 3072, 3072, 163)]
    out = []
    for a, h, l, t, p, n, batch, x in rows:
        layout = TrainingLayout(t, p, n // (t * p), 1, batch, recompute="full")
        out.append(Published(f"Narayanan 2021 Table 1, h={h} l={l}", gpt(l, h, a, batch=batch), layout,
                             "hardware_tflops", x))
    return out


def validation_set() -> list[Published]:
    rows = []
    # Table 3's configurations (tensor parallel 8, no data parallelism), interleaved by 3 for 175B and 530B.
    korthikanti = {"22B": (64, 6144, 48, 1, 8, 4, 4, 1, 1.10), "175B": (96, 12288, 96, 8, 64, 64, 1, 3, 13.75),
                   "530B": (128, 20480, 105, 35, 280, 280, 1, 3, 37.83), "1T": (160, 25600, 128, 64, 512, 512, 1, 1, 71.49)}
    for name, (a, h, l, p, n, batch, micro, v, seconds) in korthikanti.items():
        layout = TrainingLayout(8, p, n // (8 * p), micro, batch, vp=v, sp=True, recompute="selective")
        rows.append(Published(f"Korthikanti 2022 Table 5, {name}", gpt(l, h, a, batch=batch), layout, "iteration_s",
                              seconds))
    # 9 sequences per GPU and step: the micro batch is not published (1, 3 or 9); the time does not depend on it.
    rows.append(Published("NeMo launcher README, 5B on 160 A100s", gpt(24, 4096, 32, vocab=50304, batch=1440),
                          TrainingLayout(1, 1, 160, 1, 1440), "tokens_per_s", 726384))
    rows.append(Published("Megatron-LM README, GPT-3 175B on 1024 A100s", gpt(96, 12288, 96, batch=1536),
                          TrainingLayout(8, 16, 8, 1, 1536, recompute="full"), "iteration_s", 32))
    return rows


def predicted(row: Published, efficiency: Efficiency) -> float:
    e = estimate_training(row.shape, row.layout, A100, "bf16-mixed", 300e9, efficiency)
    if row.measure == "hardware_tflops":
        return e.hardware_flops_per_iteration / e.iteration_time_s / row.layout.gpus / 1e12
    return e.iteration_time_s if row.measure == "iteration_s" else e.tokens_per_s


def relative_error(row: Published, efficiency: Efficiency) -> float:
    return predicted(row, efficiency) / row.value - 1


def fit(rows: list[Published]) -> Efficiency:
    """The (max_fraction, scale) grid point with the least root-mean-square relative error."""
    best = None
    for fraction, scale in itertools.product([x / 100 for x in range(40, 81)], range(50, 2001, 25)):
        efficiency = Efficiency(fraction, float(scale))
        rms = math.sqrt(sum(relative_error(r, efficiency) ** 2 for r in rows) / len(rows))
        if best is None or rms < best[0]:
            best = (rms, efficiency)
    return best[1]


def report(rows: list[Published], efficiency: Efficiency) -> None:
    for row in rows:
        print(f"  {row.source:<48} {row.measure:<16} published {row.value:>10.4g} predicted "
              f"{predicted(row, efficiency):>10.4g} error {relative_error(row, efficiency):+.1%}")


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    calibration = narayanan_table1()
    efficiency = fit(calibration)
    print(f"fitted: max_fraction={efficiency.max_fraction} scale={efficiency.scale} (in use: {Efficiency()})")
    print("calibration set (fitted constants):")
    report(calibration, efficiency)
    print("validation set (constants in use):")
    report(validation_set(), Efficiency())


if __name__ == "__main__":
    main()

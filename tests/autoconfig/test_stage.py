"""The auto_configurator stage through main.py: its files, the search's guarantees, overrides of the
model shape and of the achieved TFLOP/s, errors, and the measured mode on this machine."""

import csv
import json

import pytest

from nemo_llm.autoconfig.estimator import TrainingLayout, estimate_training, model_shape
from nemo_llm.autoconfig.hardware import HARDWARE
from nemo_llm.autoconfig.search import TrainingSpace, search_training, training_layouts
from nemo_llm.config import compose
from tests.conftest import run_main

KEYS = {"num_parameters", "model_flops_per_iteration", "hardware_flops_per_iteration", "memory_bytes_per_gpu",
        "pipeline_bubble_fraction", "iteration_time_s", "tokens_per_s", "days_to_train", "layout"}


@pytest.fixture(scope="module")
def gpt_175b(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ac") / "run"
    result = run_main(["stages=[auto_configurator]", "+model=gpt_175b", "auto_configurator.num_gpus=1024",
                       "auto_configurator.gpu=a100_80gb", "auto_configurator.tokens=300e9", f"run_dir={run_dir}",
                       "auto_configurator.max_days=30", "auto_configurator.mode=both"])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "auto_configurator", result.stdout


def test_files_and_the_best_layout(gpt_175b):
    out, stdout = gpt_175b
    estimate = json.loads((out / "estimate.json").read_text())
    assert KEYS <= estimate.keys()
    assert set(estimate["memory_bytes_per_gpu"]) == {"weights", "gradients", "optimizer", "activations", "total"}
    layout = estimate["layout"]
    assert {"tp", "pp", "vp", "dp", "sp", "micro_batch_size", "global_batch_size", "recompute"} <= layout.keys()
    assert layout["tp"] * layout["pp"] * layout["dp"] == 1024 and estimate["fits"]
    assert estimate["memory_bytes_per_gpu"]["total"] <= 0.9 * HARDWARE["a100_80gb"].memory_bytes
    # 175B on 1024 A100s: about three weeks for 300B tokens (Narayanan et al.: 34 days at 140 TFLOP/s
    # with full recompute; NeMo's 175B recipe: about 24 days on 1024 GPUs).
    assert 15 < estimate["days_to_train"] < 35
    assert estimate["largest_model"]["compute_optimal"]["tokens"] == pytest.approx(
        20 * estimate["largest_model"]["compute_optimal"]["parameters"])
    assert estimate["inference"]["fits"] and estimate["inference"]["layout"]["tp"] * estimate["inference"]["layout"]["pp"] >= 4
    rows = list(csv.DictReader((out / "candidates.csv").open()))
    assert len(rows) == estimate["candidates"] and rows[0]["rank"] == "1"
    speeds = [float(r["tokens_per_s"]) for r in rows if r["fits"] == "True"]
    assert speeds == sorted(speeds, reverse=True) and len(speeds) == estimate["fitting"]
    assert (out / "candidates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "inference_candidates.csv").is_file()
    summary = (out / "summary.txt").read_text()
    assert "best: TP" in summary and "best: TP" in stdout


def test_every_candidate_divides_the_model_and_the_gpus():
    shape = model_shape(compose(["+model=gpt_175b"]).model)
    layouts = list(training_layouts(shape, 512, HARDWARE["h100_80gb"], TrainingSpace()))
    assert layouts
    for lay in layouts:
        assert lay.gpus == 512 and shape.num_attention_heads % lay.tp == 0 and lay.tp <= 8
        assert shape.num_layers % (lay.pp * lay.vp) == 0
        assert lay.global_batch_size % (lay.micro_batch_size * lay.dp) == 0
        assert not (lay.sp and lay.tp == 1) and (lay.vp == 1 or lay.pp > 1)


def test_more_memory_or_recompute_never_makes_a_layout_stop_fitting():
    shape = model_shape(compose(["+model=gpt_20b"]).model)
    small, large = HARDWARE["a100_40gb"], HARDWARE["a100_80gb"]
    fit_small = {e.layout for e in search_training(shape, 64, small, "bf16-mixed", 1e11) if e.fits}
    fit_large = {e.layout for e in search_training(shape, 64, large, "bf16-mixed", 1e11) if e.fits}
    assert fit_small and fit_small < fit_large
    layout = TrainingLayout(1, 1, 64, 8, 512)
    memory = {r: estimate_training(shape, TrainingLayout(1, 1, 64, 8, 512, recompute=r), large, "32", 1e11).memory.activations
              for r in ("none", "selective", "full")}
    assert memory["full"] < memory["selective"] < memory["none"]
    assert layout.num_microbatches == 1


def test_shape_overrides_and_an_achieved_tflops_override(tmp_path):
    base = ["stages=[auto_configurator]", "auto_configurator.num_gpus=64", "auto_configurator.tokens=1e11",
            "model.num_layers=24", "model.hidden_size=2048", "model.ffn_hidden_size=8192",
            "model.num_attention_heads=16", "model.encoder_seq_length=2048", "model.max_position_embeddings=2048",
            "model.global_batch_size=512", "model.tokenizer.vocab_size=50257", "auto_configurator.search.pipeline_parallel=[1,2]"]
    result = run_main([*base, f"run_dir={tmp_path / 'a'}", "auto_configurator.tflops_per_gpu=150"])
    assert result.returncode == 0, result.stderr[-3000:]
    estimate = json.loads((tmp_path / "a" / "auto_configurator" / "estimate.json").read_text())
    # 24 x 12 x 2048^2 + embeddings: a 1.3B model.
    assert 1.2e9 < estimate["num_parameters"] < 1.45e9
    # At a given achieved rate the step takes the hardware FLOPs / (GPUs x rate): Narayanan's 8TP/(nX) form.
    assert estimate["iteration_time_s"] == pytest.approx(estimate["hardware_flops_per_iteration"] / (64 * 150e12))
    assert estimate["days_to_train"] == pytest.approx(1e11 / estimate["tokens_per_s"] / 86400)
    assert estimate["layout"]["pp"] in (1, 2)


def test_bad_settings_stop_with_one_line(tmp_path):
    result = run_main(["stages=[auto_configurator]", "auto_configurator.gpu=v100", f"run_dir={tmp_path}"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: auto_configurator.gpu=v100: unknown; one of a100_40gb, a100_80gb, h100_80gb, h200_141gb")
    from nemo_llm.config import ConfigError
    from nemo_llm.stages.auto_configurator import AutoConfiguratorStage

    cfg = compose(["stages=[auto_configurator]", "auto_configurator.num_gpus=3", f"run_dir={tmp_path}",
                   "auto_configurator.search.tensor_parallel=[2]"])
    with pytest.raises(ConfigError, match="no layout of gpt_tiny divides 3 GPUs"):
        AutoConfiguratorStage().run(cfg)


@pytest.mark.slow
def test_measured_mode_trains_the_best_layouts_and_times_generation(tmp_path):
    """On this machine (CPU): the best layouts of the tiny model run for 3 steps through the training
    stage and are re-ranked by their measured step time; a layout whose run fails is reported, not fatal."""
    run_dir = tmp_path / "run"
    result = run_main(["stages=[auto_configurator]", "auto_configurator.mode=both", "auto_configurator.num_gpus=1",
                       "auto_configurator.measure.top_k=2", "auto_configurator.measure.steps=3",
                       "auto_configurator.search.micro_batch_size=[4,8]", "auto_configurator.search.recompute=[none]",
                       "trainer.accelerator=cpu", f"run_dir={run_dir}", "auto_configurator.inference.measure_top_k=1",
                       "auto_configurator.inference.input_length=16", "auto_configurator.inference.output_length=4",
                       "auto_configurator.inference.batch_sizes=[2]"])
    assert result.returncode == 0, result.stderr[-3000:]
    estimate = json.loads((run_dir / "auto_configurator" / "estimate.json").read_text())
    measured = estimate["measured"]
    assert [m["status"] for m in measured] == ["ok", "ok"]
    times = [float(m["measured_iteration_time_s"]) for m in measured]
    assert times == sorted(times) and all(t > 0 for t in times)
    assert all(float(m["measured_memory_gib"]) > 0 for m in measured)
    assert estimate["layout"]["micro_batch_size"] == measured[0]["micro_batch_size"]  # the measured best leads
    generation = estimate["inference"]["measured"][0]
    assert generation["status"] == "ok" and float(generation["measured_tokens_per_s"]) > 0

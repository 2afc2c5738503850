import importlib.util
import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_preset_table_is_what_the_plan_says():
    table = load_script("preset_table").table([])
    readme = (REPO / "README.md").read_text()
    assert table in readme, "README's preset table is stale: regenerate it with scripts/preset_table.py"


def test_data_benchmark_runs_at_a_tiny_size(capsys):
    result = load_script("bench_data").main(["--tiny"])
    for runs in result["tokenization"].values():
        assert [r["workers"] for r in runs] == [1, 2]
        assert runs[0]["tokens"] == runs[1]["tokens"] > 50_000  # the same output from 1 and 2 workers
        assert all(r["tokens_per_s_wall"] > 0 and r["tokens_per_s_per_worker_median_shard"] > 0 for r in runs)
    reads = result["sample_reads"]
    assert reads["sample_tokens"] == 2049 and reads["samples"] > 100 and reads["samples_per_s"] > 0
    assert '"sample_reads"' in capsys.readouterr().out


def test_generation_benchmark_runs_at_a_tiny_size(capsys):
    result = load_script("bench_generate").main(["--tiny"])
    cached, recomputed = result["generation"]
    assert cached["kv_cache"] and not recomputed["kv_cache"]
    assert cached["generated_tokens"] == recomputed["generated_tokens"] == 2 * 16
    assert cached["tokens_per_s"] > 0 and result["scoring"]["scored_tokens"] == 2 * 256
    assert '"generation"' in capsys.readouterr().out


def run_gpu_benchmark(tmp_path, *args):
    out = tmp_path / "bench.json"
    # A subprocess: the nemo_llm path starts a process group, which this test process must not keep.
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_gpu.py"), "--device", "cpu", "--shape",
                             "tiny", "--steps", "3", "--warmup", "1", "--out", str(out), *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(result.stdout) == report
    return report


def test_gpu_benchmark_runs_every_implementation_at_a_tiny_size_on_the_cpu(tmp_path):
    report = run_gpu_benchmark(tmp_path, "--impl", "nemo_llm,hf_eager,nanogpt_compiled",
                               "--variant", "fused_ce=model.cross_entropy_loss_fusion=true,model.attention_backend=math")
    shape = report["shape"]
    h, layers, seq, vocab = shape["hidden"], shape["num_layers"], shape["seq"], shape["vocab"]
    non_embedding = layers * (12 * h * h + 13 * h) + 2 * h
    assert report["model_flops_per_token"] == 6 * non_embedding + 12 * layers * h * seq + 6 * vocab * h
    assert report["matmul_ceiling_tflops"] > 0 and report["peak_tflops"] == report["matmul_ceiling_tflops"]
    runs = {r["impl"]: r for r in report["runs"]}
    assert list(runs) == ["nemo_llm", "hf_eager", "nanogpt_compiled", "nemo_llm:fused_ce"]
    for r in runs.values():
        assert r["steps_timed"] == 3 and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1.5
        assert r["tokens_per_s"] == pytest.approx(shape["micro_batch"] * seq / r["step_time_s"])
        assert abs(r["final_loss"] - math.log(vocab)) < 0.5  # random tokens from a fresh model: about ln V
    assert runs["nanogpt_compiled"]["speed_vs_reference"] == 1.0
    assert runs["nemo_llm:fused_ce"]["overrides"] == ["model.cross_entropy_loss_fusion=true",
                                                      "model.attention_backend=math"]
    # Same seed, same data: the fused loss is the plain one
    assert runs["nemo_llm:fused_ce"]["final_loss"] == pytest.approx(runs["nemo_llm"]["final_loss"], abs=1e-4)
    assert runs["nemo_llm"]["estimated_memory_bytes"] > 0 and runs["nemo_llm"]["train_step_time_s"] > 0


def test_gpu_benchmark_measures_recompute_overhead_of_one_layer(tmp_path):
    report = run_gpu_benchmark(tmp_path, "--layer-recompute")
    records = {r["recompute"]: r for r in report["layer_recompute"]}
    assert list(records) == ["none", "selective", "full"]
    assert records["none"]["overhead"] == 0.0
    assert all(r["layer_step_time_s"] > 0 for r in records.values())

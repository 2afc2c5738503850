import importlib.util

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

"""main.py end to end, in subprocesses, as a user runs it."""

import json
import math

import pytest
import torch

from nemo_llm.training.checkpoint import CheckpointError, load_model_from_checkpoint
from tests.conftest import run_main

FAST = ["trainer.max_steps=40", "trainer.val_check_interval=20", "trainer.limit_val_batches=4",
        "training.checkpoint.every_n_train_steps=20", "training.progress_bar=false", "evaluation.max_batches=2",
        "evaluation.generate.max_new_tokens=8", "model.optim.sched.warmup_steps=5", "model.optim.lr=3e-3"]
METRIC_KEYS = {"step", "loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_gpu", "mfu", "consumed_samples"}


@pytest.mark.slow
def test_default_pipeline_end_to_end(small_overrides, tmp_path):
    run_dir = tmp_path / "run"
    result = run_main([*small_overrides, *FAST])
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Plan for gpt_tiny:" in out and "TP 1 x PP 1 x DP 1" in out
    assert "=== stage data_preparation" in out and "=== stage evaluation" in out
    assert f"run directory: {run_dir.resolve()}" in out

    assert "name: gpt_tiny" in (run_dir / "config.yaml").read_text()
    assert "${" not in (run_dir / "config.yaml").read_text()  # resolved
    assert (run_dir / "data" / "tokenizer.model").is_file()
    assert (run_dir / "data" / "corpus_text_document.idx").is_file()

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 41))
    assert all(METRIC_KEYS <= set(r) for r in records)
    assert records[-1]["consumed_samples"] == 40 * 8
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-5:]) / 5
    assert first == pytest.approx(math.log(512), abs=0.3)
    assert last < first - 1.0, f"loss did not fall: {first} -> {last}"
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] for r in records)

    val = [json.loads(line) for line in (run_dir / "val_metrics.jsonl").read_text().splitlines()]
    assert [v["step"] for v in val] == [20, 40]
    assert val[-1]["val_loss"] < val[0]["val_loss"]

    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["step"] == 40
    for split in ("validation", "test"):
        assert evaluation[split]["tokens"] > 0
        assert evaluation[split]["perplexity"] == pytest.approx(math.exp(evaluation[split]["loss"]))
        assert evaluation[split]["perplexity"] < 512
    assert evaluation["generation"]["text"].startswith("The")

    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    checkpoints = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and "step40.ckpt" in checkpoints
    assert any(name.startswith("best-") for name in checkpoints)
    model, meta = load_model_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert meta == {"global_step": 40, "consumed_samples": 320}
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 512)

    # A second run into the same directory would overwrite those checkpoints: refused, nothing touched.
    before = (run_dir / "metrics.jsonl").read_bytes()
    again = run_main([*small_overrides, *FAST])
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: {run_dir / 'checkpoints'} holds checkpoints of an earlier run, which training would overwrite: "
        "continue it with resume=auto, or choose another run_dir= (or run_name=)"]
    assert (run_dir / "metrics.jsonl").read_bytes() == before


@pytest.mark.slow
def test_own_jsonl_data_with_byte_tokenizer(small_overrides, tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    lines = [json.dumps({"body": f"Document number {i}: the quick brown fox jumps over the lazy dog."}) for i in range(300)]
    (data / "part1.jsonl").write_text("\n".join(lines[:150]) + "\n")
    (data / "part2.jsonl").write_text("\n".join(lines[150:]) + "\n")
    result = run_main([*small_overrides, *FAST, "model.tokenizer.library=byte", f"data_preparation.input={data}/*.jsonl",
                       "data_preparation.json_key=body", "trainer.max_steps=10", "stages=[data_preparation,training]"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vocabulary 257 padded to 320" in result.stdout
    assert "corpus_text_document.bin/.idx: 300 documents" in result.stdout
    assert not (tmp_path / "run" / "eval.json").exists()


@pytest.mark.slow
def test_big_preset_prints_the_plan_and_stops_with_one_line(tmp_path):
    result = run_main(["+model=gpt_530b", f"run_dir={tmp_path / 'big'}"])
    assert result.returncode == 1
    assert "Plan for gpt_530b:" in result.stdout and "TP 8 x PP 35 x DP 1 = 280 devices" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: gpt_530b needs 280 devices")
    dry = run_main(["+model=gpt_530b", "dry_run=true", f"run_dir={tmp_path / 'big'}"])
    assert dry.returncode == 0 and "Plan for gpt_530b:" in dry.stdout
    assert not (tmp_path / "big").exists()


@pytest.mark.slow
def test_bad_override_exits_2_with_one_line(tmp_path):
    result = run_main(["model.num_query_groups=3", f"run_dir={tmp_path / 'x'}"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model.num_attention_heads=4 is not divisible by model.num_query_groups=3: "
        "each key/value group must serve the same number of query heads"]
    assert not (tmp_path / "x").exists()
    unknown = run_main(["+model=gpt_999"])
    assert unknown.returncode != 0 and "Could not find 'model/gpt_999'" in unknown.stderr


@pytest.mark.slow
def test_stage_input_errors_exit_2_with_one_line(tmp_path):
    run_dir = tmp_path / "fresh"
    result = run_main(["stages=[evaluation]", f"run_dir={run_dir}"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: stage evaluation: {run_dir / 'checkpoints' / 'last.ckpt'}: no checkpoint there; run the training "
        "stage or set evaluation.checkpoint"]


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint there"):
        load_model_from_checkpoint(tmp_path / "none.ckpt")
    (tmp_path / "bad.ckpt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"):
        load_model_from_checkpoint(tmp_path / "bad.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a nemo_llm GPT checkpoint"):
        load_model_from_checkpoint(tmp_path / "other.ckpt")


@pytest.mark.slow
def test_training_on_a_blend_of_two_prepared_corpora(small_overrides, tmp_path):
    prefixes = []
    for corpus in ("alpha", "beta"):
        source = tmp_path / f"{corpus}.jsonl"
        source.write_text("".join(json.dumps({"text": f"{corpus} document {i}: " + f"{corpus} " * 40}) + "\n"
                                  for i in range(200)))
        prepared = run_main([*small_overrides, "model.tokenizer.library=byte", f"data_preparation.input={source}",
                             f"run_dir={tmp_path / corpus}", "stages=[data_preparation]"])
        assert prepared.returncode == 0, prepared.stderr[-2000:]
        prefixes.append(str(tmp_path / corpus / "data" / "corpus_text_document"))
    result = run_main([*small_overrides, *FAST, "model.tokenizer.library=byte", "trainer.max_steps=10",
                       f"model.data.data_prefix=[0.8,{prefixes[0]},0.2,{prefixes[1]}]", "stages=[training,evaluation]"])
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert evaluation["validation"]["tokens"] > 0

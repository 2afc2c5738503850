"""Checkpoints through main.py: exact resume after SIGKILL, resharding to other layouts, preemption,
bad steps and the checks at load."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, run_main

MODEL = [
    "model.num_layers=4", "model.hidden_size=64", "model.num_attention_heads=4", "model.ffn_hidden_size=128",
    "model.encoder_seq_length=32", "model.max_position_embeddings=32", "model.micro_batch_size=2",
    "model.global_batch_size=8", "model.tokenizer.vocab_size=512", "model.make_vocab_size_divisible_by=64",
    "model.optim.sched.warmup_steps=2", "training.progress_bar=false", "training.tensorboard=false",
    "trainer.limit_val_batches=1",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Tokenizer and indexed corpus, prepared once for every run of this module."""
    data = tmp_path_factory.mktemp("prepared")
    result = run_main([*MODEL, "stages=[data_preparation]", f"run_dir={data}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return [f"model.tokenizer.model={data / 'data' / 'tokenizer.model'}",
            f"model.data.data_prefix={data / 'data' / 'corpus_text_document'}"]


def train_args(prepared, run_dir, *extra):
    return [*MODEL, *prepared, "stages=[training]", f"run_dir={run_dir}", *extra]


def losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in records]


def kill_at_a_random_step_then_resume(args, run_dir, lowest, highest, seed):
    """Start main.py, SIGKILL it once metrics.jsonl reaches a random step in [lowest, highest] (after at
    least one checkpoint), then resume with resume=auto; returns the killed step."""
    target = random.Random(seed).randint(lowest, highest)
    command = [sys.executable, str(REPO / "main.py"), *args]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= target:
            break
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and every worker, as a node failure would
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = run_main([*args, "resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    return target


@pytest.mark.slow
@pytest.mark.parametrize("layout", [[], ["trainer.devices=4", "model.tensor_model_parallel_size=2",
                                        "training.checkpoint.async_save=true"]],
                         ids=["one_process", "tp2_dp2_async_save"])
def test_sigkill_then_resume_gives_the_uninterrupted_losses_bit_for_bit(prepared, tmp_path, layout):
    common = ["trainer.max_steps=8", "trainer.val_check_interval=4", "training.checkpoint.every_n_train_steps=2",
              *layout]  # dropout stays on: its masks must resume too
    reference = tmp_path / "reference"
    result = run_main(train_args(prepared, reference, *common))
    assert result.returncode == 0, result.stderr[-3000:]

    killed = tmp_path / "killed"
    # From step 5 on there is a complete checkpoint whichever way it is saved: an async one is
    # committed at the next save.
    kill_at_a_random_step_then_resume(train_args(prepared, killed, *common), killed, 5, 7, seed=len(layout))
    assert losses(killed) == losses(reference)
    assert [r["step"] for r in map(json.loads, (killed / "val_metrics.jsonl").read_text().splitlines())] == [4, 8]
    if not layout:
        preempted = tmp_path / "preempted"
        preempt_then_resume(train_args(prepared, preempted, *common), preempted, after_step=5)
        assert losses(preempted) == losses(reference)


def preempt_then_resume(args, run_dir, after_step):
    """SIGTERM (as Slurm sends before a time limit) once metrics.jsonl has `after_step` lines: the run
    saves, exits with 75 and says how to continue; resume=auto then finishes it."""
    process = subprocess.Popen([sys.executable, str(REPO / "main.py"), *args], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= after_step:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 75, stderr[-3000:]
    assert "stopped by a signal at step" in stderr and "resume=auto" in stderr
    from nemo_llm.training.checkpoint import read_checkpoint_meta

    saved = read_checkpoint_meta(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    assert after_step <= saved < 8
    resumed = run_main([*args, "resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in resumed.stdout


def test_nan_gradients_skip_steps_then_stop_the_run_without_a_broken_checkpoint(prepared, tmp_path):
    run_dir = tmp_path / "run"
    # Weights of 1e30 overflow every forward pass to inf: each step's gradients are NaN.
    result = run_main(train_args(prepared, run_dir, "model.init_method_std=1e30", "trainer.max_steps=10",
                                 "training.max_consecutive_bad_steps=3", "training.checkpoint.every_n_train_steps=2"))
    assert result.returncode == 2
    assert "3 consecutive steps with NaN or inf gradients, up to step 3: training stopped" in result.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records] == [1.0, 1.0]  # the third step raised before it was logged
    from nemo_llm.training.checkpoint import load_model_from_checkpoint

    model, meta = load_model_from_checkpoint(run_dir / "checkpoints" / "step2.ckpt")
    assert meta["global_step"] == 2 and all(p.isfinite().all() for p in model.parameters())


RESHARD = ["model.hidden_dropout=0.0", "model.attention_dropout=0.0", "trainer.max_steps=4",
           "trainer.val_check_interval=100", "training.checkpoint.every_n_train_steps=1",
           "training.checkpoint.save_last_k=4"]


@pytest.mark.slow
def test_checkpoints_load_at_other_layouts_and_training_continues_with_the_same_losses(prepared, tmp_path):
    """tp2 x pp2 x dp2 with the distributed optimizer -> one process, -> tp4, and one process -> pp2
    (whose last stage must find the tied embedding's optimizer state under the embedding's name)."""
    source = tmp_path / "tp2_pp2_dp2"
    result = run_main(train_args(prepared, source, *RESHARD, "trainer.devices=8", "model.tensor_model_parallel_size=2",
                                 "model.pipeline_model_parallel_size=2", "model.use_distributed_optimizer=true"))
    assert result.returncode == 0, result.stderr[-3000:]
    reference = {step: loss for step, loss, _ in losses(source)}

    def resume(name, checkpoint, *layout):
        run_dir = tmp_path / name
        out = run_main(train_args(prepared, run_dir, *RESHARD, f"resume={checkpoint}", *layout))
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"resuming from {checkpoint}" in out.stdout
        resumed = {step: loss for step, loss, _ in losses(run_dir)}
        first = min(resumed)
        assert resumed == pytest.approx({s: reference[s] for s in range(first, 5)}, abs=2e-5), name
        return run_dir

    one = resume("one_process", source / "checkpoints" / "step2.ckpt")
    resume("tp4", source / "checkpoints" / "step2.ckpt", "trainer.devices=4", "model.tensor_model_parallel_size=4")
    resume("pp2", one / "checkpoints" / "step3.ckpt", "trainer.devices=2", "model.pipeline_model_parallel_size=2")


def test_resume_checks_refuse_bad_checkpoints(prepared, tmp_path):
    from nemo_llm.training.checkpoint import CheckpointError, check_checkpoint_shapes, read_checkpoint_meta

    run_dir = tmp_path / "run"
    result = run_main(train_args(prepared, run_dir, "trainer.max_steps=2", "trainer.val_check_interval=100",
                                 "training.checkpoint.every_n_train_steps=2"))
    assert result.returncode == 0, result.stderr[-3000:]
    again = run_main(train_args(prepared, run_dir, "trainer.max_steps=4"))
    assert again.returncode == 2 and "continue it with resume=auto" in again.stderr

    missing = run_main(train_args(prepared, tmp_path / "other", f"resume={tmp_path / 'nothing.ckpt'}"))
    assert missing.returncode == 2 and "nothing.ckpt: no checkpoint there" in missing.stderr

    checkpoint = run_dir / "checkpoints" / "step2.ckpt"
    from nemo_llm.models.gpt import GPTConfig, GPTModel

    stored = read_checkpoint_meta(checkpoint)["hyper_parameters"]["gpt_config"]
    wider = GPTModel(GPTConfig(**{**stored, "hidden_size": 128, "ffn_hidden_size": 256}))
    with pytest.raises(CheckpointError, match=r"does not fit this model \(model.embedding.word_embeddings.weight "
                                              r"\(512, 64\) in the checkpoint, \(512, 128\) in the model"):
        check_checkpoint_shapes(checkpoint, {f"model.{k}": v for k, v in wider.state_dict().items()})

    from nemo_llm.training.checkpoint import load_model_from_checkpoint

    last = run_dir / "checkpoints" / "last.ckpt"
    for shard in last.glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="last.ckpt: cannot be read .*incomplete or damaged"):
        load_model_from_checkpoint(last)
    (checkpoint / ".metadata").write_bytes(b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(CheckpointError, match="refusing its metadata .*os.system is not allowed"):
        check_checkpoint_shapes(checkpoint, {})
    (checkpoint / "meta.pt").unlink()  # as a save interrupted before its commit
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        read_checkpoint_meta(checkpoint)

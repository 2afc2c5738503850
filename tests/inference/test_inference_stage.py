"""The inference stage: its config rules, generation for prompts through main.py, serving in one process."""

from __future__ import annotations

import json
import shutil
import signal
import socket

import pytest

from nemo_llm.config import ConfigError, compose, validate
from nemo_llm.inference import SamplingParams
from nemo_llm.inference.client import GenerationClient
from nemo_llm.pipeline import run_pipeline
from nemo_llm.stages import STAGES
from nemo_llm.stages.inference import read_prompts
from nemo_llm.training.checkpoint import last_checkpoint_path
from tests.conftest import run_main
from tests.inference.serving import PROMPTS, TINY_MODEL, start_server, stop_server

pytestmark = pytest.mark.usefixtures("one_thread")


def config(tmp_path, *overrides):
    return compose(["stages=[inference]", f"run_dir={tmp_path / 'run'}", *TINY_MODEL, *overrides])


def refusal(cfg) -> str:
    with pytest.raises(ConfigError) as refused:
        validate(cfg)
        STAGES["inference"].check(cfg)
    return str(refused.value)


def test_the_stage_refuses_configs_it_cannot_run(tmp_path, run_dir):
    checkpoint = f"inference.checkpoint={last_checkpoint_path(run_dir)}"
    assert refusal(config(tmp_path, checkpoint)) == (
        "inference has nothing to do: give inference.prompts=[...] or inference.prompts_file=, "
        "or set inference.serve=true")
    assert refusal(config(tmp_path, checkpoint, "inference.serve=true", "inference.prompts=[hi]")) == (
        "inference.serve=true answers HTTP requests, so inference.prompts and inference.prompts_file would be "
        "ignored: leave them empty, or set inference.serve=false")
    assert refusal(config(tmp_path, checkpoint, "inference.serve=true", "trainer.devices=2",
                          "model.global_batch_size=32")) == (
        "inference.serve=true runs one model replica, but the layout's data parallel size is 2: set "
        "trainer.devices to model.tensor_model_parallel_size x model.pipeline_model_parallel_size")
    missing = tmp_path / "prompts.txt"
    assert refusal(config(tmp_path, checkpoint, f"inference.prompts_file={missing}")) == (
        f"inference.prompts_file={missing}: no such file")
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n')
    assert refusal(config(tmp_path, checkpoint, f"inference.prompts_file={bad}")) == (
        f'inference.prompts_file={bad}, line 2: needs a "prompt" string field')
    assert refusal(config(tmp_path, "inference.prompts=[hi]", f"inference.checkpoint={tmp_path / 'none.ckpt'}")) == (
        f"inference.checkpoint={tmp_path / 'none.ckpt'}: no such file or directory")
    assert refusal(config(tmp_path, "inference.prompts=[hi]")) == (
        f"{tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}: no checkpoint there; run the training stage or set "
        "inference.checkpoint")
    assert refusal(config(tmp_path, checkpoint, "inference.serve=true", "inference.sampling.max_new_tokens=64",
                          "inference.server.max_new_tokens=32")) == (
        "inference.sampling.max_new_tokens=64 is above inference.server.max_new_tokens=32, the most a request may "
        "ask for: lower the first or raise the second")
    assert refusal(config(tmp_path, checkpoint, "inference.server.port=70000")) == (
        "inference.server.port=70000 must be a TCP port (0-65535; 0 picks a free one)")
    # Inside a pipeline that trains first, the checkpoint is written before this stage runs.
    cfg = config(tmp_path, "stages=[training,inference]", "inference.prompts=[hi]")
    STAGES["inference"].check(cfg)


def test_prompts_come_from_the_list_then_the_file(tmp_path):
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": "first", "id": 1}\n\n{"prompt": ""}\n')
    text = tmp_path / "prompts.txt"
    text.write_text("one line\n\n  two  \n")
    cfg = config(tmp_path, "inference.prompts=[given]", f"inference.prompts_file={jsonl}")
    assert read_prompts(cfg.inference) == ["given", "first", ""]
    cfg = config(tmp_path, f"inference.prompts_file={text}")
    assert read_prompts(cfg.inference) == ["one line", "  two  "]


def test_main_writes_the_generations_of_every_prompt_in_order(tmp_path, run_dir, engine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # see one_thread
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["From a file", "x"]))
    out_dir = tmp_path / "out"
    result = run_main(["stages=[inference]", f"run_dir={out_dir}", f"inference.checkpoint={run_dir}",
                       f"inference.prompts=[{','.join(repr(p) for p in PROMPTS)}]",
                       f"inference.prompts_file={prompts_file}", "inference.batch_size=2",
                       "inference.sampling.greedy=true", "inference.sampling.max_new_tokens=6",
                       "inference.sampling.logprobs=true", *TINY_MODEL])
    assert result.returncode == 0, result.stderr[-3000:]
    prompts = [*PROMPTS, "From a file", "x"]
    expected = [g.to_dict() for g in engine.generate(prompts, SamplingParams(max_new_tokens=6, greedy=True,
                                                                             logprobs=True))]
    written = [json.loads(line) for line in (out_dir / "generations.jsonl").read_text().splitlines()]
    # Batched in twos here: the same tokens, log-probabilities up to float rounding.
    assert [{**g, "logprobs": None} for g in written] == [{**g, "logprobs": None} for g in expected]
    for mine, theirs in zip(written, expected):
        assert mine["logprobs"] == pytest.approx(theirs["logprobs"], abs=1e-5)
    assert f"[4] 'x' -> {expected[4]['text']!r} (length)" in result.stdout
    summary = json.loads((out_dir / "stages.json").read_text())["inference"]
    assert summary["output_file"] == str(out_dir / "generations.jsonl")
    assert (summary["prompts"], summary["generated_tokens"]) == (5, sum(len(g["token_ids"]) for g in expected))


def test_main_serves_in_one_process_until_sigterm(tmp_path, run_dir, engine):
    out_dir = tmp_path / "served"
    process, url = start_server(["stages=[inference]", f"run_dir={out_dir}", f"inference.checkpoint={run_dir}",
                                 "inference.serve=true", "inference.server.port=0", *TINY_MODEL],
                                tmp_path / "stderr.txt")
    try:
        generated = GenerationClient(url, timeout=60).generate(PROMPTS, greedy=True, max_new_tokens=5)
    finally:
        stdout = stop_server(process, signal.SIGTERM, whole_group=False)
    assert process.returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert generated == [g.to_dict() for g in engine.generate(PROMPTS, SamplingParams(max_new_tokens=5, greedy=True))]
    assert "server stopped after 1 request(s)" in stdout
    summary = json.loads((out_dir / "stages.json").read_text())["inference"]
    assert summary == {"url": url, "requests": 1, "signal": "SIGTERM"}


def test_run_time_refusals_end_the_run_with_one_line(tmp_path, run_dir, capsys):
    """A taken port, a prompt too long for the context, a checkpoint without a tokenizer."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = run_pipeline(config(tmp_path, f"inference.checkpoint={run_dir}", "inference.serve=true",
                                   f"inference.server.port={port}"))
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: stage inference: cannot listen on 127.0.0.1:{port} (Address already in use): choose another "
        "inference.server.port (0 picks a free one)")

    long_prompt = "y" * 60
    code = run_pipeline(config(tmp_path, f"inference.checkpoint={run_dir}", f"inference.prompts=[short,{long_prompt}]",
                               "inference.sampling.max_new_tokens=8"))
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: stage inference: prompt 1 ('{long_prompt[:40]}...') has 60 tokens; with inference.sampling."
        "max_new_tokens=8 that exceeds the model's context of 64 tokens: shorten it or lower max_new_tokens")

    lonely = shutil.copy(last_checkpoint_path(run_dir), tmp_path / "lonely.ckpt")  # no run config.yaml beside it
    with pytest.warns(UserWarning, match="no tokenizer files"):
        code = run_pipeline(config(tmp_path, f"inference.checkpoint={lonely}", "inference.prompts=[hi]"))
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: stage inference: {lonely} has no tokenizer, so text cannot be generated: use a run directory's "
        "checkpoint (its config.yaml names the tokenizer) or an import_hf output")

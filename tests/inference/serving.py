"""A tiny run directory and main.py serving in a subprocess: what the server and inference stage tests share."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from nemo_llm.models.gpt import GPTConfig, GPTModel
from nemo_llm.training.checkpoint import last_checkpoint_path
from tests.conftest import REPO

CONTEXT = 64  # the tiny model's max_position_embeddings
PROMPTS = ["The cat", "Hello world, this is", ""]
# main.py settings that describe the tiny checkpoint (the printed plan and the layout checks read them).
TINY_MODEL = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128", "model.num_attention_heads=4",
              f"model.encoder_seq_length={CONTEXT}", f"model.max_position_embeddings={CONTEXT}",
              "model.tokenizer.library=byte", "trainer.accelerator=cpu"]


def write_tiny_run(run_dir: Path) -> Path:
    """A run directory as the training stage leaves it (checkpoints/last.ckpt and config.yaml naming the
    byte tokenizer), holding a random 2-layer model. Weights 10x the usual init make the logits far
    apart, so greedy picks do not flip with the summation order of another layout."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=320, max_position_embeddings=CONTEXT, num_layers=2, hidden_size=64,
                       ffn_hidden_size=128, num_attention_heads=4, num_query_groups=4, hidden_dropout=0.0,
                       attention_dropout=0.0, init_method_std=0.2)
    model = GPTModel(config)
    checkpoint = last_checkpoint_path(run_dir)
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"gpt_config": asdict(config)}, "global_step": 1, "consumed_samples": 8},
               checkpoint)
    (run_dir / "config.yaml").write_text(f"run_dir: {run_dir}\nmodel:\n  tokenizer:\n    library: byte\n")
    return run_dir


def start_server(args: list[str], stderr_path: Path) -> tuple[subprocess.Popen, str]:
    """main.py serving in a subprocess of its own session (so that a signal to its process group is
    what Ctrl-C sends); returns it and the URL it printed."""
    with open(stderr_path, "w") as stderr:  # a file, not a pipe nobody reads: request logs go there
        process = subprocess.Popen([sys.executable, "-u", str(REPO / "main.py"), *args], cwd=REPO, text=True,
                                   stdout=subprocess.PIPE, stderr=stderr, start_new_session=True,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in process.stdout:
        found = re.search(r"serving text generation on (http://\S+)", line)
        if found:
            return process, found.group(1)
    process.wait(timeout=60)
    raise AssertionError(f"the server did not start (exit {process.returncode}):\n{stderr_path.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen, signum: int, whole_group: bool) -> str:
    """Send signum (to the process group, as Ctrl-C does, or to main.py alone); returns its stdout."""
    if whole_group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    try:
        stdout, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return stdout

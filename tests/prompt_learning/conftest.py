import os

import pytest
import torch.distributed as dist


@pytest.fixture(scope="module", autouse=True)
def leave_no_process_group():
    """Training in this process makes Lightning set MASTER_ADDR/MASTER_PORT and open a TCP store on that port;
    later tests' main.py subprocesses would inherit the variables and fail to bind the port this process holds."""
    saved = dict(os.environ)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)

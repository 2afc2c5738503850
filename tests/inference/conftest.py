import pytest
import torch

from nemo_llm.inference import InferenceEngine
from tests.inference.serving import write_tiny_run


@pytest.fixture(scope="module")
def one_thread():
    """A model this small runs faster on one thread: two spin on OpenMP barriers when other work shares the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("inference") / "run")


@pytest.fixture(scope="module")
def engine(run_dir):
    return InferenceEngine.load(str(run_dir))

"""Inference at tensor, pipeline and data parallel layouts gives what one process gives."""

import pytest

from nemo_llm.launcher import launch_local
from tests.inference.parallel_worker import run

LAYOUTS = {  # name: (tp, pp, processes, model overrides); tensor parallelism alone is inside tp2xpp2
    "pp2-llama": (1, 2, 2, dict(normalization="rmsnorm", activation="swiglu", bias=False,
                                share_embeddings_and_output_weights=False)),
    "tp2xpp2": (2, 2, 4, {}),
    "dp2": (1, 1, 2, {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_generates_and_scores_like_one_process(layout):
    tp, pp, processes, overrides = LAYOUTS[layout]
    reference = run(1, 1, overrides)
    for rank, result in launch_local(run, (tp, pp, overrides), processes).items():
        assert result["greedy"] == reference["greedy"], f"rank {rank}"
        assert result["sampled"] == reference["sampled"], f"rank {rank}"
        for ours, theirs in zip(result["scores"] + result["sampled_logprobs"],
                                reference["scores"] + reference["sampled_logprobs"]):
            assert ours == pytest.approx(theirs, abs=1e-5)
        assert result["greedy_flags"] == reference["greedy_flags"]
        # Streaming runs on one replica; data-parallel runs skip it.
        assert result["streamed"] == (reference["streamed"] if layout != "dp2" else [])

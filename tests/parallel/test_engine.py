"""The engine in one process (the multi-process layouts are in test_layout_parity.py)."""

import pytest
import torch
import torch.distributed as dist

from nemo_llm.models.gpt import GPTConfig, GPTModel, gpt_loss
from nemo_llm.parallel.engine import EngineSettings, GPTEngine
from nemo_llm.parallel.pipeline_parallel import stage_indices, stage_layer_counts
from nemo_llm.parallel.state import destroy_model_parallel, initialize_model_parallel


@pytest.fixture
def single_rank(tmp_path):
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield initialize_model_parallel(1, 1)
    destroy_model_parallel()
    dist.destroy_process_group()


def model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=64, max_position_embeddings=16, num_layers=2, hidden_size=32,
                              ffn_hidden_size=64, num_attention_heads=4, num_query_groups=4, hidden_dropout=0.0,
                              attention_dropout=0.0))


def batch():
    ids = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(3))
    return ids[:, :-1], ids[:, 1:]


def test_forward_backward_averages_microbatches_like_one_big_batch(single_rank):
    tokens, labels = batch()
    reference = model()
    gpt_loss(reference(tokens), labels).backward()
    engine = GPTEngine(model(), single_rank, EngineSettings(), num_microbatches=2, device=torch.device("cpu"))
    loss = engine.forward_backward(tokens, labels)
    assert loss.item() == pytest.approx(gpt_loss(reference(tokens), labels).item(), abs=1e-6)
    for (name, p), q in zip(engine.parts[0].named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    norm = engine.clip_grad_norm(max_norm=0.01)
    expected = torch.cat([q.grad.flatten() for q in reference.parameters()]).norm()
    assert norm.item() == pytest.approx(expected.item(), rel=1e-5)
    clipped = torch.cat([p.grad.flatten() for p in engine.parameters()]).norm()
    assert clipped.item() == pytest.approx(0.01, rel=1e-4)


def test_fp16_overflow_skips_the_step_and_lowers_the_scale(single_rank):
    tokens, labels = batch()
    engine = GPTEngine(model(), single_rank, EngineSettings(precision="16-mixed"), num_microbatches=1,
                       device=torch.device("cpu"))
    engine.loss_scaler.scale = 1e38  # the scaled gradients overflow
    before = {n: p.detach().clone() for n, p in engine.named_parameters()}
    optimizer = torch.optim.AdamW(engine.parameters(), lr=1e-2)
    loss = engine.forward_backward(tokens, labels)
    assert engine.skipped_step and engine.loss_scaler.scale == 5e37
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in engine.parameters())
    optimizer.step()
    for name, p in engine.named_parameters():
        assert torch.equal(p, before[name]), name

    engine.loss_scaler.scale = 1024.0
    loss = engine.forward_backward(tokens, labels)
    assert not engine.skipped_step
    assert loss.item() == pytest.approx(gpt_loss(model()(tokens), labels).item(), abs=1e-2)  # fp16 compute


def test_stage_layout_helpers():
    assert stage_layer_counts(8, 4) == [2, 2, 2, 2]
    assert stage_layer_counts(8, 2, [5, 3]) == [5, 3]
    with pytest.raises(ValueError):
        stage_layer_counts(8, 3)
    with pytest.raises(ValueError):
        stage_layer_counts(8, 2, [4, 3])
    assert stage_indices(pp_rank=1, pp_size=4, virtual_size=2) == [1, 5]

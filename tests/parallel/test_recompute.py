import pytest
import torch

from nemo_llm.models.gpt import GPTConfig, GPTModel, gpt_loss
from nemo_llm.parallel import apply_recompute

POLICIES = [("selective", None, None), ("full", "uniform", 1), ("full", "uniform", 2), ("full", "uniform", 3),
            ("full", "block", 1), ("full", "block", 4)]


def build(dropout: float) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=64, max_position_embeddings=16, num_layers=4, hidden_size=32,
                              ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                              hidden_dropout=dropout, attention_dropout=dropout))


def gradients(model: GPTModel, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)  # the same dropout masks for every policy
    gpt_loss(model(ids[:, :-1]), ids[:, 1:]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def saved_bytes(model: GPTModel, ids: torch.Tensor) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = gpt_loss(model(ids[:, :-1]), ids[:, 1:])
    loss.backward()
    return total


@pytest.mark.parametrize("granularity, method, num_layers", POLICIES)
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_every_policy_gives_the_gradients_of_none(granularity, method, num_layers, dropout):
    ids = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(2))
    expected = gradients(build(dropout), ids)
    model = apply_recompute(build(dropout), granularity, method, num_layers)
    got = gradients(model, ids)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_state_dict_keys_do_not_depend_on_the_policy():
    keys = build(0.0).state_dict().keys()
    for policy in POLICIES:
        assert apply_recompute(build(0.0), *policy).state_dict().keys() == keys


def test_recompute_keeps_fewer_activations():
    ids = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(2))
    none = saved_bytes(build(0.1), ids)
    selective = saved_bytes(apply_recompute(build(0.1), "selective"), ids)
    block2 = saved_bytes(apply_recompute(build(0.1), "full", "block", 2), ids)
    uniform1 = saved_bytes(apply_recompute(build(0.1), "full", "uniform", 1), ids)
    uniform4 = saved_bytes(apply_recompute(build(0.1), "full", "uniform", 4), ids)
    assert none > selective > uniform1 and none > block2 > uniform1 > uniform4


def test_dynamic_loss_scaler():
    from nemo_llm.parallel.loss_scaler import DynamicLossScaler

    scaler = DynamicLossScaler(scale=1024.0, growth_interval=2)
    scaler.update(found_inf=True)
    assert scaler.scale == 512.0
    scaler.update(False)
    scaler.update(False)
    assert scaler.scale == 1024.0
    state = scaler.state_dict()
    other = DynamicLossScaler()
    other.load_state_dict(state)
    assert other.scale == 1024.0
    for _ in range(20):
        scaler.update(True)
    assert scaler.scale == 1.0  # never below min_scale

"""The plan's activation estimate (Korthikanti et al. 2022) against the bytes the model really keeps
for backward, measured with saved-tensor hooks on CPU in bf16 for each recompute policy."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from nemo_llm.config import compose
from nemo_llm.models.gpt import GPTModel, gpt_config_from
from nemo_llm.parallel import apply_recompute
from nemo_llm.plan import activation_bytes_per_layer

S, B, H, A, LAYERS = 64, 2, 64, 4, 3
OVERRIDES = [f"model.encoder_seq_length={S}", f"model.max_position_embeddings={S}", f"model.hidden_size={H}",
             f"model.num_attention_heads={A}", f"model.ffn_hidden_size={4 * H}", f"model.num_layers={LAYERS}",
             f"model.micro_batch_size={B}", f"model.global_batch_size={B}", "model.tokenizer.library=byte"]


def saved_bytes_per_layer(model_cfg, policy) -> float:
    """Bytes of distinct non-parameter storages saved for backward by the decoder layers, per layer."""
    torch.manual_seed(0)
    model = GPTModel(gpt_config_from(model_cfg, 257)).to(torch.bfloat16)
    model.decoder.final_layernorm = torch.nn.Identity()
    apply_recompute(model, *policy)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.randn(B, S, H, dtype=torch.bfloat16, requires_grad=True)
    # The math kernel keeps the attention scores, as the paper's accounting assumes.
    with sdpa_kernel(SDPBackend.MATH), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.decoder(x)
    return sum(storages.values()) / LAYERS


def estimate(overrides) -> float:
    m = compose(OVERRIDES + overrides).model
    return activation_bytes_per_layer(m, B)


def test_selective_recompute_keeps_34_sbh():
    m = compose(OVERRIDES).model
    measured = saved_bytes_per_layer(m, ("selective",))
    assert measured == pytest.approx(estimate(["model.activations_checkpoint_granularity=selective"]), rel=0.1)
    assert estimate(["model.activations_checkpoint_granularity=selective"]) == 34 * S * B * H


def test_full_recompute_keeps_only_the_layer_input():
    m = compose(OVERRIDES).model
    assert saved_bytes_per_layer(m, ("full", "uniform", 1)) == pytest.approx(2 * S * B * H, rel=0.01)
    # Chunks of 3 layers keep one input per chunk.
    assert saved_bytes_per_layer(m, ("full", "uniform", 3)) == pytest.approx(2 * S * B * H / 3, rel=0.01)


def test_without_recompute_the_attention_core_adds_at_least_5_a_s_squared_b():
    """Beyond the selective part, the paper counts scores, softmax (2 bytes) and dropout mask (1 byte):
    5 a s^2 b. PyTorch's math kernel keeps them in fp32, so it holds at least that much; fused
    (flash) kernels on GPUs keep none, which makes the estimate an upper bound there."""
    m = compose(OVERRIDES).model
    none = saved_bytes_per_layer(m, (None,))
    selective = saved_bytes_per_layer(m, ("selective",))
    attention_core = 5 * A * S * S * B
    assert estimate([]) == pytest.approx(34 * S * B * H + attention_core)
    assert none - selective >= attention_core
    assert none - selective <= 3 * attention_core

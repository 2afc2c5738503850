import math

import pytest
import torch

from nemo_llm.models.gpt import IGNORE_INDEX, GPTConfig, GPTModel, KVCache, gpt_loss, pad_vocab_size

VARIANTS = {
    "gpt3": {},
    "llama": dict(position_embedding_type="rope", normalization="rmsnorm", activation="swiglu", bias=False,
                  share_embeddings_and_output_weights=False, num_query_groups=2),
    "mqa": dict(num_query_groups=1, position_embedding_type="rope"),
}


def tiny(**overrides) -> GPTConfig:
    base = dict(vocab_size=96, max_position_embeddings=16, num_layers=2, hidden_size=32, ffn_hidden_size=64,
                num_attention_heads=4, num_query_groups=4, hidden_dropout=0.0, attention_dropout=0.0)
    return GPTConfig(**{**base, **overrides})


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_shape(variant):
    model = GPTModel(tiny(**VARIANTS[variant]))
    logits = model(torch.randint(0, 96, (3, 16)))
    assert logits.shape == (3, 16, 96)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_a_future_token_does_not_change_the_past(variant):
    torch.manual_seed(0)
    model = GPTModel(tiny(**VARIANTS[variant])).eval()
    ids = torch.randint(0, 96, (1, 12))
    changed = ids.clone()
    changed[0, 8] = (ids[0, 8] + 1) % 96
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_gives_the_logits_of_the_full_sequence(variant):
    torch.manual_seed(0)
    model = GPTModel(tiny(**VARIANTS[variant])).eval()
    ids = torch.randint(0, 96, (2, 16))
    cache = KVCache(max_length=16)
    # A prefill, a chunk of several tokens after cached ones (needs the offset causal mask), then one at a time.
    pieces = [model(ids[:, :5], cache), model(ids[:, 5:9], cache)]
    pieces += [model(ids[:, i:i + 1], cache) for i in range(9, 16)]
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(pieces, dim=1), model(ids), atol=1e-5, rtol=1e-5)


def test_kv_cache_refuses_to_overflow():
    model = GPTModel(tiny()).eval()
    cache = KVCache(max_length=4)
    model(torch.zeros(1, 3, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="KV cache holds 4 positions; 5 were asked for"):
        model(torch.zeros(1, 2, dtype=torch.long), cache)


def test_module_names_follow_megatron_core():
    names = {n for n, _ in GPTModel(tiny()).named_parameters()}
    for expected in ("embedding.word_embeddings.weight", "embedding.position_embeddings.weight",
                     "decoder.layers.0.input_layernorm.weight", "decoder.layers.0.self_attention.linear_qkv.weight",
                     "decoder.layers.1.self_attention.linear_proj.weight", "decoder.layers.1.pre_mlp_layernorm.bias",
                     "decoder.layers.1.mlp.linear_fc1.weight", "decoder.layers.1.mlp.linear_fc2.bias",
                     "decoder.final_layernorm.weight"):
        assert expected in names
    llama = {n for n, _ in GPTModel(tiny(**VARIANTS["llama"])).named_parameters()}
    assert "output_layer.weight" in llama and "embedding.position_embeddings.weight" not in llama
    assert "decoder.layers.0.mlp.linear_fc1_gate.weight" in llama
    assert not any(n.endswith(".bias") for n in llama)


def test_tied_embeddings_share_one_tensor():
    model = GPTModel(tiny())
    assert model.output_layer.weight is model.embedding.word_embeddings.weight
    untied = GPTModel(tiny(share_embeddings_and_output_weights=False))
    assert untied.output_layer.weight is not untied.embedding.word_embeddings.weight


def test_qkv_layout_is_per_query_group():
    """Whole groups [queries..., key, value] lie contiguously, so half the rows hold half the groups."""
    cfg = tiny(num_query_groups=2)
    model = GPTModel(cfg)
    qkv = model.decoder.layers["0"].self_attention.linear_qkv
    d, per_group = cfg.head_dim, cfg.num_attention_heads // cfg.num_query_groups + 2
    assert qkv.weight.shape == ((cfg.num_attention_heads + 2 * cfg.num_query_groups) * d, cfg.hidden_size)
    # Zeroing the value rows of group 0 only changes what heads of group 0 read.
    with torch.no_grad():
        qkv.weight[(per_group - 1) * d:per_group * d] = 0
        qkv.bias[(per_group - 1) * d:per_group * d] = 0
    x = torch.randn(1, 5, cfg.hidden_size)
    attention = model.decoder.layers["0"].self_attention
    captured = {}
    original = attention.core_attention

    def capture(q, k, v):
        captured["v"] = v
        return original(q, k, v)

    attention.core_attention = capture
    attention(x)
    v = captured["v"]  # [b, groups, s, d]
    assert v.shape[1] == 2
    assert torch.count_nonzero(v[:, 0]) == 0 and torch.count_nonzero(v[:, 1]) > 0


def test_gqa_equals_mha_with_repeated_key_value_heads():
    torch.manual_seed(0)
    gqa = GPTModel(tiny(num_query_groups=2, position_embedding_type="rope")).eval()
    mha = GPTModel(tiny(num_query_groups=4, position_embedding_type="rope")).eval()
    state = gqa.state_dict()
    d = 8
    for i in ("0", "1"):
        key = f"decoder.layers.{i}.self_attention.linear_qkv"
        for part in ("weight", "bias"):
            groups = state[f"{key}.{part}"].view(2, 4, d, *state[f"{key}.{part}"].shape[1:])  # [g, (q, q, k, v), d]
            rows = []
            for g in range(2):
                for q in range(2):  # each query head becomes its own group with the group's key and value
                    rows += [groups[g, q], groups[g, 2], groups[g, 3]]
            state[f"{key}.{part}"] = torch.cat(rows)
    mha.load_state_dict(state)
    ids = torch.randint(0, 96, (2, 10))
    torch.testing.assert_close(gqa(ids), mha(ids))


def test_init_follows_megatron():
    cfg = tiny(num_layers=8, hidden_size=256, ffn_hidden_size=1024, vocab_size=512, init_method_std=0.02)
    model = GPTModel(cfg)
    layer = model.decoder.layers["3"]
    assert layer.self_attention.linear_qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * 8)
    assert layer.self_attention.linear_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert layer.mlp.linear_fc2.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert torch.count_nonzero(layer.mlp.linear_fc1.bias) == 0
    assert torch.all(layer.input_layernorm.weight == 1)


def test_pad_vocab_size():
    assert pad_vocab_size(50257, 128) == 50304
    assert pad_vocab_size(50257, 128, 8) == 51200
    assert pad_vocab_size(256, 128) == 256


@pytest.mark.parametrize("variant", VARIANTS)
def test_overfits_one_batch(variant):
    torch.manual_seed(0)
    model = GPTModel(tiny(**VARIANTS[variant]))
    ids = torch.randint(0, 96, (4, 17))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = gpt_loss(model(ids[:, :-1]), ids[:, 1:])
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 4.0  # about ln(96) at init
    assert loss.item() < 0.1


def test_ignored_labels_take_no_part_in_the_loss():
    logits = torch.randn(1, 4, 10)
    labels = torch.tensor([[1, 2, IGNORE_INDEX, IGNORE_INDEX]])
    expected = torch.nn.functional.cross_entropy(logits[0, :2], labels[0, :2])
    torch.testing.assert_close(gpt_loss(logits, labels), expected)

"""import_hf and export_hf against transformers: the same logits (1e-4) on the same tokens, both ways."""

import json
import warnings

import pytest
import torch

import nemo_llm
from nemo_llm.convert import ConversionError, export_hf, import_hf
from nemo_llm.models.gpt import GPTConfig, GPTModel, pad_vocab_size
from nemo_llm.tokenizers import ByteTokenizer
from tests.convert.conftest import (VOCAB, assert_logits_match, copy_dir, edit_config, gpt2_model, hf_logits,
                                    llama_model, tokens, transformers)


def round_trip(hf_model, tmp_path, **save_options):
    """save_pretrained -> import_hf -> nemo_llm.load -> compare -> export_hf -> from_pretrained -> compare."""
    ids = tokens()
    expected = hf_logits(hf_model, ids)
    hf_model.save_pretrained(tmp_path / "hf", **save_options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no tokenizer in these folders
        checkpoint = import_hf(tmp_path / "hf", tmp_path / "nemo")
        model, _ = nemo_llm.load(checkpoint)
    with torch.no_grad():
        assert_logits_match(model(ids), expected)
    export_hf(model, tmp_path / "exported")
    assert_logits_match(hf_logits(tmp_path / "exported", ids), expected)
    return model, json.loads((tmp_path / "exported" / "config.json").read_text())


def test_gpt2_tied(tmp_path):
    model, exported = round_trip(gpt2_model(tied=True), tmp_path)
    assert model.config.position_embedding_type == "learned_absolute" and model.config.vocab_size == VOCAB
    assert model.output_layer.weight is model.embedding.word_embeddings.weight
    assert exported["architectures"] == ["GPT2LMHeadModel"] and exported["tie_word_embeddings"]


def test_gpt2_untied(tmp_path):
    model, exported = round_trip(gpt2_model(tied=False), tmp_path)
    assert model.output_layer.weight is not model.embedding.word_embeddings.weight
    assert not exported["tie_word_embeddings"]


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_llama_grouped_query_attention(tmp_path, tied):
    model, exported = round_trip(llama_model(tied=tied, kv_heads=2), tmp_path)
    c = model.config
    assert (c.num_attention_heads, c.num_query_groups, c.rotary_base) == (4, 2, 5000.0)
    assert c.share_embeddings_and_output_weights == tied and not c.bias
    assert exported["architectures"] == ["LlamaForCausalLM"] and exported["num_key_value_heads"] == 2


def test_sharded_safetensors(tmp_path):
    round_trip(llama_model(tied=False), tmp_path, max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def test_pytorch_model_bin_with_bare_gpt2_names(tmp_path):
    """pytorch_model.bin as older transformers wrote it, with the tensor names of OpenAI's GPT2Model
    checkpoints (wte.weight, h.0....), read with weights_only."""
    hf_model = gpt2_model()
    hf_model.config.save_pretrained(tmp_path)
    state = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.warns(UserWarning, match="no tokenizer files"):
        model, tokenizer = nemo_llm.load(tmp_path)
    ids = tokens()
    with torch.no_grad():
        assert_logits_match(model(ids), hf_logits(hf_model, ids))
    assert tokenizer is None


def test_pickled_code_is_refused(tmp_path):
    gpt2_model().config.save_pretrained(tmp_path)
    torch.save({"weights": ConversionError("not a tensor")}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="cannot be read as weights"):
        nemo_llm.load(tmp_path)


@pytest.mark.parametrize("arch, change, expected", [
    ("llama", {"architectures": ["MistralForCausalLM"], "model_type": "mistral"},
     "architecture MistralForCausalLM is not supported: nemo_llm converts GPT2LMHeadModel and LlamaForCausalLM"),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling="),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}},
     "rope_parameters.rope_type='yarn'"),
    ("llama", {"attention_bias": True}, "attention_bias=True adds biases to the attention projections"),
    ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ("gpt2", {"activation_function": "relu"}, "activation_function='relu' is another activation"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
])
def test_refused_architecture_or_field(tmp_path, gpt2_dir, arch, change, expected):
    hf_dir = copy_dir(gpt2_dir, tmp_path / "hf") if arch == "gpt2" else tmp_path / "hf"
    if arch == "llama":
        llama_model(tied=True).save_pretrained(hf_dir)
    edit_config(hf_dir, **change)
    with pytest.raises(ConversionError) as info:
        import_hf(hf_dir, tmp_path / "out")
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_mismatched_shapes_name_every_tensor(tmp_path):
    llama_model(tied=True, kv_heads=2).save_pretrained(tmp_path)
    edit_config(tmp_path, num_key_value_heads=4)  # k and v projections now look too small
    with pytest.raises(ConversionError) as info:
        import_hf(tmp_path, tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and "the weights do not match config.json" in message
    assert "model.layers.0.self_attn.k_proj.weight has shape [32, 64] where config.json implies [64, 64]" in message
    assert "model.layers.1.self_attn.v_proj.weight has shape [32, 64]" in message


def test_missing_and_unexpected_tensors_are_named(tmp_path, gpt2_dir):
    from safetensors.torch import load_file, save_file

    hf_dir = copy_dir(gpt2_dir, tmp_path / "hf")
    state = load_file(hf_dir / "model.safetensors")
    state["transformer.h.0.attn.extra.weight"] = state.pop("transformer.h.1.mlp.c_fc.bias")
    save_file(state, hf_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError) as info:
        import_hf(hf_dir, tmp_path / "out")
    message = str(info.value)
    assert "transformer.h.1.mlp.c_fc.bias is missing" in message
    assert "transformer.h.0.attn.extra.weight is not a GPT2LMHeadModel weight" in message


def test_folder_without_weights(tmp_path):
    gpt2_model().config.save_pretrained(tmp_path)
    with pytest.raises(ConversionError, match="no weights; expected model.safetensors"):
        import_hf(tmp_path, tmp_path / "out")


def trained_here(**overrides) -> GPTModel:
    """A model as the training stage builds it: vocabulary padded (byte tokenizer: 257 -> 320), biases
    and norms away from their init."""
    config = dict(vocab_size=pad_vocab_size(257, 64), max_position_embeddings=32, num_layers=2, hidden_size=64,
                  ffn_hidden_size=96, num_attention_heads=4, num_query_groups=4, hidden_dropout=0.0,
                  attention_dropout=0.0)
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(**{**config, **overrides}))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


@pytest.mark.parametrize("layout, overrides", [
    ("GPT2LMHeadModel", {}),
    ("GPT2LMHeadModel", {"bias": False}),
    ("LlamaForCausalLM", dict(position_embedding_type="rope", normalization="rmsnorm", activation="swiglu",
                              bias=False, num_query_groups=2, share_embeddings_and_output_weights=False)),
], ids=["gpt", "gpt-no-bias", "llama"])
def test_export_of_a_model_trained_here_drops_the_vocab_padding(tmp_path, layout, overrides):
    model = trained_here(**overrides)
    with pytest.warns(UserWarning, match="byte tokenizer has no Hugging Face tokenizer file"):
        export_hf(model, tmp_path, ByteTokenizer())
    exported = json.loads((tmp_path / "config.json").read_text())
    assert exported["architectures"] == [layout] and exported["vocab_size"] == 257
    assert exported["eos_token_id"] == 256
    ids = tokens(vocab=257)
    with torch.no_grad():
        assert_logits_match(hf_logits(tmp_path, ids), model(ids)[..., :257])


@pytest.mark.parametrize("overrides, named", [
    (dict(position_embedding_type="rope"), "position_embedding_type=rope has no Hugging Face equivalent"),
    (dict(normalization="rmsnorm", activation="swiglu", position_embedding_type="rope", bias=True),
     "bias=True has no Hugging Face equivalent in the nearest layout, LlamaForCausalLM"),
    (dict(num_query_groups=2), "num_query_groups=2 (grouped-query attention) has no equivalent in GPT-2"),
])
def test_export_refuses_features_without_hf_equivalent(tmp_path, overrides, named):
    with pytest.raises(ConversionError) as info:
        export_hf(trained_here(**overrides), tmp_path)
    assert named in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "config.json").exists()


def test_tokenizer_json_is_loaded_copied_and_exported(tmp_path, gpt2_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["the cat sat on the mat, and the dog sat on the log"] * 20,
                            trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_dir = copy_dir(gpt2_dir, tmp_path / "hf")
    bpe.save(str(hf_dir / "tokenizer.json"))
    text = "the cat sat on the log"

    model, tokenizer = nemo_llm.load(hf_dir)
    assert tokenizer.encode(text) == bpe.encode(text).ids and tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eod_id == 0  # config.json's eos_token_id

    checkpoint = import_hf(hf_dir, tmp_path / "nemo")
    info = json.loads((tmp_path / "nemo" / "nemo_llm.json").read_text())
    assert info["tokenizer"]["model"] == "tokenizer.json" and (tmp_path / "nemo" / "tokenizer.json").is_file()
    _, reloaded = nemo_llm.load(checkpoint)
    assert reloaded.encode(text) == tokenizer.encode(text)

    export_hf(model, tmp_path / "exported", tokenizer)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "exported")
    assert auto(text).input_ids == tokenizer.encode(text) and auto.eos_token == "<|endoftext|>"

"""Small, randomly initialised transformers models saved with save_pretrained, and helpers to compare
their logits with ours."""

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 300
TOLERANCE = 1e-4


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights far from the init (norm gains and biases included), so that a tensor mapped to the wrong
    place, transposed or mis-ordered changes the logits well beyond the tolerance."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.2
            is_gain = parameter.dim() == 1 and ("ln" in name or "norm" in name) and name.endswith("weight")
            parameter.copy_(noise + 1.0 if is_gain else noise)
    return model.eval()


def gpt2_model(tied: bool = True) -> torch.nn.Module:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=tied)
    return randomize(transformers.GPT2LMHeadModel(config))


def llama_model(tied: bool, kv_heads: int = 2, **overrides) -> torch.nn.Module:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
                                      rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied,
                                      bos_token_id=1, eos_token_id=2, **overrides)
    return randomize(transformers.LlamaForCausalLM(config), seed=1)


def tokens(vocab: int = VOCAB, seq: int = 24) -> torch.Tensor:
    return torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def hf_logits(model_or_dir, ids: torch.Tensor) -> torch.Tensor:
    model = model_or_dir
    if not isinstance(model, torch.nn.Module):
        model = transformers.AutoModelForCausalLM.from_pretrained(model_or_dir).eval()
    return model(ids).logits


def assert_logits_match(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < TOLERANCE


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    gpt2_model().save_pretrained(path)
    return path


def copy_dir(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_config(hf_dir: Path, **changes) -> None:
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, **changes}))


def write_training_checkpoint(path: Path, model, **extra) -> Path:
    """The single-file layout the training stage writes (Lightning's keys that load_model_from_checkpoint reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"gpt_config": asdict(model.config)}, "global_step": 5, **extra}, path)
    return path

import math

import pytest
import torch

from nemo_llm.models.gpt import GPTConfig, GPTModel
from nemo_llm.training.lr_schedule import cosine_annealing_lr
from nemo_llm.training.optim import build_optimizer, build_scheduler, clip_grad_norm

OPTIM = {"lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "eps": 1e-8,
         "sched": {"warmup_steps": 10, "constant_steps": 5, "min_lr": 1e-4}}


def test_cosine_annealing_shape():
    lr = [cosine_annealing_lr(s, 1.0, 0.1, warmup_steps=10, constant_steps=5, max_steps=115) for s in range(115)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)  # linear warmup
    assert lr[10] == pytest.approx(1.0)
    assert lr[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # half-way
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))
    assert lr[110:] == [pytest.approx(0.1)] * 5  # constant tail at min_lr


def test_scheduler_drives_the_optimizer():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, OPTIM)
    scheduler = build_scheduler(optimizer, OPTIM, max_steps=100)
    seen = []
    for _ in range(100):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(1e-4) and seen[9] == pytest.approx(1e-3) and seen[-1] == pytest.approx(1e-4)


def test_no_weight_decay_on_biases_and_norms():
    model = GPTModel(GPTConfig(vocab_size=64, max_position_embeddings=8, num_layers=1, hidden_size=16,
                               ffn_hidden_size=32, num_attention_heads=2, num_query_groups=2))
    decay, no_decay = build_optimizer(model, OPTIM).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_clip_grad_norm_returns_the_norm_before_clipping():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(4))
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    norm = clip_grad_norm([a, b], max_norm=1.0)
    assert norm.item() == pytest.approx(5.0)
    assert torch.cat([a.grad, b.grad]).norm().item() == pytest.approx(1.0, rel=1e-5)
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    assert clip_grad_norm([a], max_norm=0).item() == pytest.approx(3.0) and a.grad[0] == 3.0

"""The speed options (docs/benchmarks.md, GPU speed levers) change how the step runs, never what it
computes: each gives the default engine's loss and gradients (fp8 within its precision), and the
combinations they cannot serve are refused with one line."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from nemo_llm.config import ConfigError, compose, validate
from nemo_llm.models.gpt import gpt_loss
from nemo_llm.models.gpt.cross_entropy import IGNORE_INDEX, linear_cross_entropy
from nemo_llm.parallel.engine import EngineSettings, GPTEngine
from nemo_llm.parallel.float8 import Float8Unavailable, apply_fp8, fp8_context
from nemo_llm.plan import GiB, Machine, build_plan, check_resources
from tests.parallel.test_engine import batch, model, single_rank  # noqa: F401 (fixture)


def reference_gradients(hidden, weight, labels):
    hidden, weight = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    loss = F.cross_entropy((hidden @ weight.t()).float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    return loss, hidden.grad, weight.grad


def test_chunked_cross_entropy_gives_the_loss_and_gradients_of_the_full_logits():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 29, 16, generator=generator, requires_grad=True)
    weight = torch.randn(100, 16, generator=generator, requires_grad=True)
    labels = torch.randint(0, 100, (3, 29), generator=generator)
    labels[0, :7] = IGNORE_INDEX  # answer-only losses and padding
    expected, hidden_grad, weight_grad = reference_gradients(hidden, weight, labels)
    loss = linear_cross_entropy(hidden, weight, labels, chunk_tokens=10)  # 87 tokens: the last chunk is short
    (2.5 * loss).backward()  # backward scales by the incoming gradient (a loss scale, 1/microbatches)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    torch.testing.assert_close(hidden.grad, 2.5 * hidden_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight.grad, 2.5 * weight_grad, rtol=1e-5, atol=1e-7)


def test_chunked_cross_entropy_in_autocast_and_without_gradients():
    generator = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(2, 32, 32, generator=generator), torch.randn(50, 32, generator=generator)
    labels = torch.randint(0, 50, (2, 32), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(hidden, weight, labels, chunk_tokens=16)
        plain = gpt_loss(nn.functional.linear(hidden, weight), labels)
    assert fused.dtype == torch.float32
    assert fused.item() == pytest.approx(plain.item(), rel=1e-2)  # both bf16 matmuls, fp32 softmax
    expected = reference_gradients(hidden, weight, labels)[0]
    with torch.no_grad():
        assert linear_cross_entropy(hidden, weight, labels).item() == pytest.approx(expected.item(), abs=1e-5)


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def engine_step(state, settings: EngineSettings):
    tokens, labels = batch()
    engine = GPTEngine(model(), state, settings, num_microbatches=2, device=torch.device("cpu"))
    loss = engine.forward_backward(tokens, labels)
    grads = {name: full(p.grad).clone() for name, p in engine.parts[0].named_parameters()}
    return engine, loss, grads


LEVERS = {
    "fused_cross_entropy": EngineSettings(cross_entropy_loss_fusion=True, cross_entropy_chunk_tokens=24),
    "attention_math": EngineSettings(attention_backend="math"),
    "attention_flash": EngineSettings(attention_backend="flash"),  # PyTorch's CPU flash kernel
    "fused_cross_entropy_fsdp": EngineSettings(cross_entropy_loss_fusion=True, use_distributed_optimizer=True),
    # Compiled layers as the benchmark combines them: recompute traced into the graphs, FSDP around them.
    "compiled_layers_selective_fsdp_fused": EngineSettings(
        torch_compile=True, recompute={"granularity": "selective"}, use_distributed_optimizer=True,
        cross_entropy_loss_fusion=True, attention_backend="flash"),
}


@pytest.mark.parametrize("lever", [pytest.param(name, marks=pytest.mark.slow) if name.startswith("compiled") else name
                                   for name in LEVERS])
def test_lever_gives_the_default_loss_and_gradients(single_rank, lever):  # noqa: F811
    _, expected_loss, expected = engine_step(single_rank, EngineSettings())
    engine, loss, grads = engine_step(single_rank, LEVERS[lever])
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-6)
    assert grads.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        assert engine.evaluate_loss(*batch()).item() == pytest.approx(expected_loss.item(), abs=1e-5)


def test_clipping_stays_on_the_device(single_rank, monkeypatch):  # noqa: F811
    engine, _, _ = engine_step(single_rank, EngineSettings())

    def no_sync(*args):
        raise AssertionError("clip_grad_norm read a value back to the host")

    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    norm = engine.clip_grad_norm(max_norm=1e-3)
    monkeypatch.undo()
    clipped = torch.cat([p.grad.flatten() for p in engine.parameters()]).norm()
    assert norm.item() > 1e-3 and clipped.item() == pytest.approx(1e-3, rel=1e-4)


def test_torchao_float8_trains_close_to_bf16(single_rank):  # noqa: F811
    pytest.importorskip("torchao.float8")
    from torchao.float8.float8_linear import Float8Linear

    bf16 = EngineSettings(precision="bf16-mixed")
    _, expected_loss, expected = engine_step(single_rank, bf16)
    engine, loss, grads = engine_step(single_rank, EngineSettings(precision="bf16-mixed", fp8="torchao"))
    part = engine.parts[0]
    converted = [name for name, m in part.named_modules() if isinstance(m, Float8Linear)]
    assert len(converted) == 2 * 4  # per layer: qkv, proj, fc1, fc2; the output layer stays bf16
    assert not any("output_layer" in name for name in converted)
    assert part.state_dict().keys() == model().state_dict().keys()  # checkpoints do not depend on fp8
    assert loss.item() == pytest.approx(expected_loss.item(), rel=2e-2)
    for name in expected:  # e4m3/e5m2 rounding: gradients point the same way
        cosine = F.cosine_similarity(grads[name].flatten(), expected[name].flatten(), dim=0)
        assert cosine > 0.95, (name, cosine)


def test_missing_fp8_packages_are_named(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name.startswith(("torchao", "transformer_engine")):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    with pytest.raises(Float8Unavailable, match="model.fp8=torchao needs the torchao package"):
        apply_fp8(model(), "torchao")
    with pytest.raises(Float8Unavailable, match="model.fp8=transformer_engine needs NVIDIA Transformer Engine"):
        apply_fp8(model(), "transformer_engine")
    with pytest.raises(Float8Unavailable, match="transformer_engine"):
        fp8_context("transformer_engine")


@pytest.mark.parametrize("overrides, message", [
    (["model.cross_entropy_loss_fusion=true", "model.tensor_model_parallel_size=2", "trainer.devices=2"],
     "model.cross_entropy_loss_fusion=true needs tensor_model_parallel_size=1"),
    (["model.cross_entropy_chunk_tokens=0"], "model.cross_entropy_chunk_tokens"),
    (["model.fp8=torchao", "model.tensor_model_parallel_size=2", "trainer.devices=2"],
     "model.fp8=torchao needs tensor_model_parallel_size=1"),
    (["model.fp8=e4m3"], "model.fp8"),
    (["model.attention_backend=xformers"], "model.attention_backend"),
    (["model.torch_compile_mode=reduce-overhead"], "applies only with model.torch_compile=true"),
])
def test_combinations_that_cannot_run_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(compose(overrides))


@pytest.mark.parametrize("overrides, machine, message", [
    (["model.attention_backend=cudnn"], Machine(gpus=0, gpu_memory=0, cpu_memory=24 * GiB),
     "model.attention_backend=cudnn needs a CUDA GPU"),
    (["model.attention_backend=flash", "trainer.precision=32"], Machine(gpus=1, gpu_memory=80 * GiB,
                                                                         cpu_memory=256 * GiB),
     "model.attention_backend=flash runs in half precision on a GPU"),
    (["model.fp8=transformer_engine"], Machine(gpus=0, gpu_memory=0, cpu_memory=24 * GiB),
     "model.fp8=transformer_engine needs a CUDA GPU"),
])
def test_device_dependent_options_are_checked_against_the_machine(overrides, machine, message):
    cfg = compose(overrides)
    assert check_resources(build_plan(cfg), cfg, machine).startswith(message)

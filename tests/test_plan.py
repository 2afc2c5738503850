import pytest
import torch

from nemo_llm.config import compose, validate
from nemo_llm.models.gpt import GPTModel, gpt_config_from
from nemo_llm.plan import (GiB, Machine, activation_bytes_per_layer, build_plan, check_resources, count_parameters,
                           gpt3_formula_parameters, model_flops_per_iteration, padded_vocab_size)
from tests.conftest import GPT3_PRESETS, PRESETS


def meta_model_parameters(model_cfg) -> int:
    with torch.device("meta"):
        model = GPTModel(gpt_config_from(model_cfg, model_cfg.tokenizer.vocab_size))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", PRESETS)
def test_plan_count_is_the_models_real_count(preset):
    m = compose([f"+model={preset}"]).model
    assert count_parameters(m) == meta_model_parameters(m)


@pytest.mark.parametrize("preset", GPT3_PRESETS)
def test_gpt3_formula_matches_the_model_plus_final_layernorm(preset):
    m = compose([f"+model={preset}"]).model
    vocab = padded_vocab_size(m)
    formula = gpt3_formula_parameters(m.num_layers, m.hidden_size, vocab, m.encoder_seq_length)
    assert meta_model_parameters(m) == round(formula) + 2 * m.hidden_size


@pytest.mark.parametrize("overrides", [
    ["model.num_query_groups=2", "model.position_embedding_type=rope", "model.normalization=rmsnorm",
     "model.activation=swiglu", "model.bias=false", "model.share_embeddings_and_output_weights=false"],
    ["model.num_query_groups=1", "model.activation=swiglu"],
])
def test_plan_count_for_llama_style_variants(overrides):
    m = compose(overrides).model
    assert count_parameters(m) == meta_model_parameters(m)


def test_gpt_126m_by_hand():
    # 12 layers x (12 h^2 + 13 h) + V h + s h + 2 h with h=768, V=50257 padded to 50304, s=2048
    layer = 12 * 768**2 + 13 * 768
    expected = 12 * layer + 50304 * 768 + 2048 * 768 + 2 * 768
    assert expected == 125_262_336
    plan = build_plan(compose(["+model=gpt_126m"]))
    assert plan.parameters == expected
    assert plan.padded_vocab_size == 50304
    assert (plan.tensor_parallel, plan.pipeline_parallel, plan.data_parallel, plan.world_size) == (1, 1, 64, 64)
    assert plan.num_microbatches == 256 // (4 * 64)


def test_vocab_padding_follows_tensor_parallel_size():
    plan = build_plan(compose(["+model=gpt_530b"]))
    assert plan.padded_vocab_size == 51200  # multiple of 128 x TP 8
    assert plan.world_size == 280 and plan.data_parallel == 1
    assert plan.parameters == pytest.approx(530e9, rel=0.01)


def test_flops_formula_is_6n_plus_attention_plus_logits_per_token():
    b, s, l, h, v = 4, 2048, 24, 2048, 50304
    per_token = 6 * 12 * l * h**2 + 12 * l * h * s + 6 * v * h
    assert model_flops_per_iteration(b, s, l, h, v) == pytest.approx(per_token * b * s, rel=1e-12)


def test_memory_estimate_of_gpt_tiny_by_hand():
    cfg = compose([])
    plan = build_plan(cfg)
    params = 1_334_016
    assert plan.parameters == params
    assert plan.memory.weights == 4 * params
    assert plan.memory.gradients == 4 * params
    assert plan.memory.optimizer == 8 * params
    # s=128, b=16, h=128, a=4: s b h (34 + 5 a s / h) bytes at 16 bit, x4 layers, x2 for fp32,
    # plus fp32 logits s b V x 4 bytes
    sbh = 128 * 16 * 128
    expected = sbh * (34 + 5 * 4 * 128 / 128) * 4 * 2 + 4 * 128 * 16 * 4096
    assert plan.memory.activations == pytest.approx(expected)
    # The fused loss holds one chunk of 512 tokens' fp32 logits and their gradient, and the fp32 gradient of
    # the output layer, instead of all 2,048 tokens' logits.
    fused = build_plan(compose(["model.cross_entropy_loss_fusion=true", "model.cross_entropy_chunk_tokens=512"]))
    assert fused.memory.activations == pytest.approx(expected - 4 * 128 * 16 * 4096 + 4 * 4096 * (2 * 512 + 128))


def test_activation_formulas_of_korthikanti_et_al():
    s, b, h, a, t = 2048, 1, 12288, 96, 8
    base = ["+model=gpt_175b", f"model.micro_batch_size={b}"]
    sbh = s * b * h
    m = compose(base + ["model.activations_checkpoint_granularity=null"]).model
    assert activation_bytes_per_layer(m, b) == pytest.approx(sbh / t * (34 + 5 * a * s / h))  # TP + SP
    m = compose(base + ["model.activations_checkpoint_granularity=null", "model.sequence_parallel=false"]).model
    assert activation_bytes_per_layer(m, b) == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)))
    m = compose(base).model  # selective + SP
    assert activation_bytes_per_layer(m, b) == pytest.approx(34 * sbh / t)


def test_pipeline_first_stage_holds_p_microbatches():
    common = ["model.num_layers=8", "model.micro_batch_size=1", "model.global_batch_size=16", "model.hidden_dropout=0"]
    one = build_plan(compose(common)).memory
    pp4 = build_plan(compose(common + ["model.pipeline_model_parallel_size=4", "trainer.devices=4"])).memory
    # A quarter of the layers, four microbatches in flight: the same layer activations (first stage has no logits).
    logits = 4 * 128 * 1 * 4096
    assert pp4.activations == pytest.approx(one.activations - logits)
    assert pp4.weights < one.weights


def test_uneven_split_and_gpipe_change_the_first_stage():
    common = ["model.num_layers=8", "model.micro_batch_size=1", "model.global_batch_size=16", "trainer.devices=2",
              "model.pipeline_model_parallel_size=2"]
    even = build_plan(compose(common)).memory
    heavy_first = build_plan(compose(common + ["model.pipeline_model_parallel_layer_split=[6,2]"])).memory
    assert heavy_first.activations == pytest.approx(even.activations * 6 / 4)
    gpipe = build_plan(compose(common + ["model.pipeline_schedule=gpipe"])).memory
    assert gpipe.activations == pytest.approx(even.activations * 16 / 2)  # all 16 microbatches, not 2


def test_resource_check_lets_a_cluster_job_run_its_node():
    cfg = compose(["+model=gpt_126m"])
    node = Machine(gpus=8, gpu_memory=80 * GiB, cpu_memory=1024 * GiB, in_cluster_job=True)
    assert check_resources(build_plan(cfg), cfg, node) is None


def test_full_recompute_keeps_only_layer_inputs():
    full = compose(["model.activations_checkpoint_granularity=full", "model.activations_checkpoint_method=uniform",
                    "model.activations_checkpoint_num_layers=1"])
    plan = build_plan(full)
    layer_input = 2 * 128 * 16 * 128
    assert plan.memory.activations == pytest.approx(4 * layer_input * 2 + 4 * 128 * 16 * 4096)


def test_resource_check_names_what_is_missing():
    cfg = compose(["+model=gpt_530b"])
    validate(cfg)
    plan = build_plan(cfg)
    cpu_box = Machine(gpus=0, gpu_memory=0, cpu_memory=24 * GiB)
    reason = check_resources(plan, cfg, cpu_box)
    assert reason.startswith("gpt_530b needs 280 devices (35 nodes x 8; TP 8 x PP 35 x DP 1)")
    assert "dry_run=true" in reason

    tiny = compose([])
    assert check_resources(build_plan(tiny), tiny, cpu_box) is None
    gpu_tiny = compose(["trainer.accelerator=gpu"])
    assert "no CUDA GPU" in check_resources(build_plan(gpu_tiny), gpu_tiny, cpu_box)

    one_node = compose(["+model=gpt_20b", "trainer.num_nodes=1", "model.global_batch_size=4"])
    small_gpu_box = Machine(gpus=8, gpu_memory=16 * GiB, cpu_memory=1024 * GiB)
    assert "exceeds this GPU's 16.0 GiB" in check_resources(build_plan(one_node), one_node, small_gpu_box)
    assert "trainer.devices=8 but this machine has 1 GPU(s)" in check_resources(
        build_plan(one_node), one_node, Machine(gpus=1, gpu_memory=80 * GiB, cpu_memory=1024 * GiB))


def test_plan_renders_every_section():
    text = build_plan(compose(["+model=gpt_175b"])).render()
    for word in ("parameters", "layout", "TP 8 x PP 16 x DP 8", "memory/device", "weights", "gradients", "optimizer",
                 "activations", "data_preparation -> training -> evaluation"):
        assert word in text


def test_distributed_optimizer_shards_parameter_state_over_data_parallel_ranks():
    base = ["+model=gpt_1.3b"]
    replicated = build_plan(compose(base + ["model.use_distributed_optimizer=false"])).memory
    sharded = build_plan(compose(base + ["model.use_distributed_optimizer=true"])).memory
    params = replicated.gradients / 4
    assert replicated.weights == 6 * params  # fp32 weights + autocast's bf16 copies
    dp = 128
    assert sharded.optimizer == pytest.approx(8 * params / dp)
    assert sharded.gradients == pytest.approx(4 * params / dp)
    assert sharded.weights == pytest.approx(4 * params / dp + 2 * params)  # fp32 shard + gathered bf16
    assert sharded.activations == replicated.activations

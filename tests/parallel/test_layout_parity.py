"""Every parallel layout trains like one process: 3 optimizer steps through main.py (the real
launch, strategy, engine and checkpoint path) give the single-process losses, gradient norms and
final weights."""

import json

import pytest
import torch

from nemo_llm.training.checkpoint import load_model_from_checkpoint
from tests.conftest import run_main

PARITY = [
    "model.num_layers=4", "model.hidden_size=64", "model.num_attention_heads=4", "model.ffn_hidden_size=128",
    "model.encoder_seq_length=32", "model.max_position_embeddings=32", "model.micro_batch_size=2",
    "model.global_batch_size=8", "model.tokenizer.vocab_size=512", "model.make_vocab_size_divisible_by=64",
    "model.hidden_dropout=0.0", "model.attention_dropout=0.0", "trainer.max_steps=3", "trainer.val_check_interval=3",
    "trainer.limit_val_batches=1", "model.optim.sched.warmup_steps=1", "training.progress_bar=false",
    "training.tensorboard=false", "training.checkpoint.every_n_train_steps=3",
]

# Plain tp2 and pp2 with 1F1B are inside tp2_dp2 (tensor parallel without sequence parallelism) and
# pp2_uneven_split / pp2_dp2_fused_loss (1F1B), so they cost no separate launch.
LAYOUTS = {
    "tp2_sp": ["trainer.devices=2", "model.tensor_model_parallel_size=2", "model.sequence_parallel=true"],
    "tp2_sp_selective": ["trainer.devices=2", "model.tensor_model_parallel_size=2", "model.sequence_parallel=true",
                         "model.activations_checkpoint_granularity=selective"],
    "pp2_gpipe_untied": ["trainer.devices=2", "model.pipeline_model_parallel_size=2", "model.pipeline_schedule=gpipe",
                         "model.share_embeddings_and_output_weights=false"],
    "pp2_interleaved_v2_fused_loss": ["trainer.devices=2", "model.pipeline_model_parallel_size=2",
                                      "model.virtual_pipeline_model_parallel_size=2",
                                      "model.cross_entropy_loss_fusion=true"],
    "pp2_uneven_split": ["trainer.devices=2", "model.pipeline_model_parallel_size=2",
                         "model.pipeline_model_parallel_layer_split=[3,1]"],
    "dp2": ["trainer.devices=2"],
    "dp2_distributed_optimizer": ["trainer.devices=2", "model.use_distributed_optimizer=true"],
    "tp2_pp2": ["trainer.devices=4", "model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2",
                "model.sequence_parallel=true"],
    "tp2_dp2": ["trainer.devices=4", "model.tensor_model_parallel_size=2", "model.use_distributed_optimizer=true"],
    # with the fused loss on the last stage, its output layer's weight used outside the stage's forward (FSDP2)
    "pp2_dp2_fused_loss": ["trainer.devices=4", "model.pipeline_model_parallel_size=2",
                           "model.use_distributed_optimizer=true", "model.cross_entropy_loss_fusion=true",
                           "model.cross_entropy_chunk_tokens=48"],
    "tp2_pp2_dp2": ["trainer.devices=8", "model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2",
                    "model.sequence_parallel=true", "model.use_distributed_optimizer=true"],
}
LLAMA = ["model.activation=swiglu", "model.position_embedding_type=rope", "model.normalization=rmsnorm",
         "model.num_query_groups=2", "model.bias=false", "model.share_embeddings_and_output_weights=false"]
LAYOUTS["tp2_pp2_llama_style"] = LAYOUTS["tp2_pp2"] + LLAMA
# Variants of the model that change the reference too.
REFERENCE_OVERRIDES = {"pp2_gpipe_untied": ["model.share_embeddings_and_output_weights=false"],
                       "tp2_pp2_llama_style": LLAMA}


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    data = root / "data"
    result = run_main([*PARITY, f"run_dir={root / 'prep'}", f"data_preparation.output_dir={data}",
                       "stages=[data_preparation]"])
    assert result.returncode == 0, result.stderr[-3000:]
    return root, data


def train(root, data, name, overrides):
    run_dir = root / name
    result = run_main([*PARITY, *overrides, f"run_dir={run_dir}", f"data_preparation.output_dir={data}",
                       "stages=[training]"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return run_dir


@pytest.fixture(scope="module")
def references(prepared):
    root, data = prepared
    cache = {}

    def get(key: tuple[str, ...]):
        if key not in cache:
            cache[key] = train(root, data, f"reference{len(cache)}", list(key))
        return cache[key]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_matches_one_process(layout, prepared, references):
    root, data = prepared
    reference = references(tuple(REFERENCE_OVERRIDES.get(layout, [])))
    run_dir = train(root, data, layout, LAYOUTS[layout])

    expected, got = metrics(reference), metrics(run_dir)
    assert [r["step"] for r in got] == [1, 2, 3]
    for e, g in zip(expected, got):
        assert g["loss"] == pytest.approx(e["loss"], abs=1e-5), (e, g)
        assert g["grad_norm"] == pytest.approx(e["grad_norm"], rel=1e-4), (e, g)
        assert g["consumed_samples"] == e["consumed_samples"]

    last = "checkpoints/last.ckpt"
    assert (run_dir / last).is_dir(), "a multi-process run writes a sharded (DCP) checkpoint"
    expected_model, _ = load_model_from_checkpoint(reference / last)
    got_model, meta = load_model_from_checkpoint(run_dir / last)
    assert meta["global_step"] == 3
    expected_state, got_state = expected_model.state_dict(), got_model.state_dict()
    assert expected_state.keys() == got_state.keys()
    # AdamW divides by sqrt(v): on gradient entries near zero it turns float noise of 1e-7 into
    # changes of up to a few 1e-5 after 3 steps at lr 2e-3; anything structural is orders larger.
    for key in expected_state:
        torch.testing.assert_close(got_state[key], expected_state[key], rtol=0, atol=1e-4, msg=key)


TRAIN_12_STEPS = ["trainer.max_steps=12", "trainer.val_check_interval=12", "model.optim.lr=3e-3"]


@pytest.mark.slow
@pytest.mark.parametrize("name, layout", [
    ("fp16_tp2_pp2", ["trainer.devices=4", "model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2",
                      "trainer.precision=16-mixed"]),
    ("bf16_tp2_dp2", ["trainer.devices=4", "model.tensor_model_parallel_size=2", "model.use_distributed_optimizer=true",
                      "trainer.precision=bf16-mixed"]),
])
def test_half_precision_trains(name, layout, prepared):
    root, data = prepared
    records = metrics(train(root, data, name, layout + TRAIN_12_STEPS))
    assert len(records) == 12
    # fp16 may skip a few steps while the loss scale settles; they carry no update.
    losses = [r["loss"] for r in records if not r["skipped"]]
    assert len(losses) >= 8
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5

"""Prompt learning on the synthetic task at one process: each style learns what the frozen base
cannot do, the base stays bit-identical, prompt files save, load, bake and extend."""

import pytest
import torch
import torch.nn.functional as F

from nemo_llm.inference import SamplingParams
from nemo_llm.prompt_learning.inference import prompt_engine, task_accuracy
from nemo_llm.prompt_learning.prompts import (PromptFileError, add_task, attach_prompts, bake, read_prompt_file, virtual_tokens)
from nemo_llm.prompt_learning.templates import PromptTokenizer, TaskTemplate
from nemo_llm.prompt_learning.training import fit_prompts
from nemo_llm.tokenizers.byte import ByteTokenizer
from nemo_llm.training.checkpoint import load_model_from_checkpoint
from tests.prompt_learning.synthetic import BASE, STYLES, prompt_config, records, task, write_base



@torch.no_grad()
def label_accuracy(model, tokenizer: PromptTokenizer, rows, taskname="colour") -> float:
    """The share of records whose label is the more likely of yes / no under the model."""
    correct = 0
    for row in rows:
        scores = {}
        for label in ("yes", "no"):
            ids, start = tokenizer.encode_example(taskname, {**row, "label": label}, 64)
            logprobs = F.log_softmax(model(torch.tensor([ids[:-1]])).float(), -1)[0]
            scores[label] = sum(logprobs[i - 1, ids[i]].item() for i in range(start, len(ids)))
        correct += max(scores, key=scores.get) == row["label"]
    return correct / len(rows)


@pytest.mark.parametrize("style", list(STYLES))
def test_each_style_learns_what_the_frozen_base_cannot(trained, style):
    tmp, module, summary = trained[style]
    rows = records(48, 2)
    prompts = read_prompt_file(summary["prompts"])
    tokenizer = PromptTokenizer(ByteTokenizer(), virtual_tokens(prompts))

    base, _ = load_model_from_checkpoint(tmp / BASE)
    add_task(base, TaskTemplate(**task()), style, {"encoder_type": "mlp", "encoder_hidden": 64, "num_layers": 2,
                                                   "dropout": 0.0}, seed=0)
    assert label_accuracy(base.eval(), tokenizer, rows) < 0.65  # untrained prompts: near chance

    learned, _ = load_model_from_checkpoint(tmp / BASE)
    attach_prompts(learned, prompts)
    assert label_accuracy(learned.eval(), tokenizer, rows) > 0.9

    # Greedy generation through the inference engine, from the baked table.
    engine = prompt_engine(summary["prompt_table"], ByteTokenizer())
    assert task_accuracy(engine, rows, max_new_tokens=4)["colour"]["accuracy"] > 0.9
    generation = engine.generate(["<|VIRTUAL_PROMPT_0|> <|VIRTUAL_PROMPT_1|>hat a"],
                                 SamplingParams(max_new_tokens=4, greedy=True))
    assert generation[0].text == "yes"


@pytest.mark.parametrize("style", list(STYLES))
def test_base_weights_bit_identical_and_only_prompts_trained(trained, style):
    tmp, module, _ = trained[style]
    base, _ = load_model_from_checkpoint(tmp / BASE)
    part = module.engine.parts[0]
    trained_state = part.state_dict()
    for name, tensor in base.state_dict().items():
        assert torch.equal(trained_state[name], tensor), name
    trainable = {n for n, p in part.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("embedding.prompts.colour.") for n in trainable)
    optimized = {id(p) for group in module.trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in part.parameters() if p.requires_grad}
    # The DCP checkpoint holds the prompts and their optimizer state, not the base.
    from nemo_llm.training.checkpoint import _checked_reader

    keys = set(_checked_reader(tmp / "run/prompt_learning/checkpoints/last.ckpt").read_metadata().state_dict_metadata)
    model_keys = {k for k in keys if k.startswith("state_dict.")}
    assert model_keys and all(".embedding.prompts.colour." in k for k in model_keys)
    assert any(k.startswith("optimizer_states.") for k in keys)


def test_baked_table_gives_the_encoders_logits(trained):
    tmp, _, summary = trained["p-tuning"]
    prompts = read_prompt_file(summary["prompts"])
    assert prompts["tasks"]["colour"]["style"] == "p-tuning"
    baked = bake(prompts)
    assert set(baked["state_dict"]) == {"colour.weight"}
    ids = torch.tensor([PromptTokenizer(ByteTokenizer(), virtual_tokens(prompts)).encode(
        "<|VIRTUAL_PROMPT_0|> <|VIRTUAL_PROMPT_1|>box c")])
    with_encoder, _ = load_model_from_checkpoint(tmp / BASE)
    with_table, _ = load_model_from_checkpoint(tmp / BASE)
    attach_prompts(with_encoder, prompts).eval()
    attach_prompts(with_table, baked).eval()
    torch.testing.assert_close(with_table(ids), with_encoder(ids), rtol=0, atol=1e-6)


def test_a_different_base_is_refused(trained, tmp_path):
    _, _, summary = trained["prompt-tuning"]
    other = tmp_path / "other.ckpt"
    write_base(other, seed=1)
    with pytest.raises(PromptFileError, match="language_model_path"):
        prompt_engine(summary["prompts"], ByteTokenizer(), base_checkpoint=other)


def test_new_task_later_keeps_old_prompts_bit_identical(trained, tmp_path):
    tmp, _, summary = trained["prompt-tuning"]
    write_base(tmp_path / BASE)  # the same base again (seed 0)
    cfg = prompt_config(tmp_path, "prompt-tuning", ["prompt_learning.optim.lr=0.05",
                                                    f"prompt_learning.restore_path={summary['prompts']}",
                                                    "prompt_learning.existing_tasks=[colour]"],
                        taskname="letters", max_steps=5)
    _, second = fit_prompts(cfg)
    old, new = read_prompt_file(summary["prompts"]), read_prompt_file(second["prompts"])
    assert list(new["tasks"]) == ["colour", "letters"]
    assert torch.equal(new["state_dict"]["colour.weight"], old["state_dict"]["colour.weight"])
    assert not torch.equal(new["state_dict"]["letters.weight"], new["state_dict"]["colour.weight"])
    # The old task still answers as before, next to the new one.
    engine = prompt_engine(second["prompt_table"], ByteTokenizer(), default_task="colour")
    assert task_accuracy(engine, records(24, 2), max_new_tokens=4)["colour"]["accuracy"] > 0.9


def test_interrupted_prompt_learning_resumes_to_the_same_prompts(tmp_path):
    """A run that stopped after its step-2 checkpoint, continued with resume=auto, ends where an
    uninterrupted run ends. The restored prompts, optimizer state, learning rate and data position are
    exact (step 3's loss is bit-identical); later steps agree to float rounding only, because the
    frozen base's backward on CPU is not bitwise reproducible between a process's first step and a
    later one (gradients differ by about 1e-7 relative with identical inputs)."""
    import json
    import shutil

    from nemo_llm.training.checkpoint import read_checkpoint_meta
    from tests.prompt_learning.conftest import in_process_training

    every_2 = [*STYLES["prompt-tuning"], "training.checkpoint.every_n_train_steps=2", "training.checkpoint.save_last_k=5",
               "trainer.log_every_n_steps=1"]
    with in_process_training():
        _, whole = fit_prompts(prompt_config(tmp_path / "whole", "prompt-tuning", every_2, max_steps=4))
    # What an interruption during step 4 leaves behind: the step-2 checkpoint and three lines of metrics.
    out = tmp_path / "part" / "run" / "prompt_learning"
    shutil.copytree(tmp_path / "whole" / "run", tmp_path / "part" / "run")
    for checkpoint in (out / "checkpoints").iterdir():
        if read_checkpoint_meta(checkpoint)["global_step"] != 2:
            shutil.rmtree(checkpoint)
    for name in ("prompts.pt", "prompt_table.pt"):
        (out / name).unlink()
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(metrics[:3]) + "\n")

    with in_process_training():
        _, resumed = fit_prompts(prompt_config(tmp_path / "part", "prompt-tuning", [*every_2, "resume=auto"], max_steps=4))
    assert resumed["steps"] == 4
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    uninterrupted = [json.loads(line)["loss"] for line in metrics]
    assert [s["loss"] for s in steps[:3]] == uninterrupted[:3]
    assert steps[3]["loss"] == pytest.approx(uninterrupted[3], rel=1e-6)
    expected, got = read_prompt_file(whole["prompts"]), read_prompt_file(resumed["prompts"])
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    for key, tensor in expected["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], tensor, rtol=0, atol=1e-6, msg=key)


def test_a_second_run_does_not_overwrite_prompt_checkpoints(tmp_path):
    from nemo_llm.config import ConfigError
    from nemo_llm.stages.prompt_learning import PromptLearningStage

    cfg = prompt_config(tmp_path, "prompt-tuning")
    checkpoints = tmp_path / "run" / "prompt_learning" / "checkpoints"
    (checkpoints / "step2.ckpt").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds prompt-learning checkpoints of an earlier run.*resume=auto"):
        PromptLearningStage().check(cfg)

"""The prompt_learning stage after pretraining in one `python main.py stages=[...]` chain."""

import json
import threading

import pytest

from tests.conftest import run_main


def squad_json(path, questions: int, seed: int):
    """A SQuAD v1.1 file of short made-up paragraphs."""
    import random

    rng = random.Random(seed)
    animals, times = ["owls", "bats", "cats", "foxes"], ["at night", "at dawn", "at noon", "in winter"]
    paragraphs = []
    for i in range(questions):
        animal, time = rng.choice(animals), rng.choice(times)
        paragraphs.append({"context": f"{animal.capitalize()} hunt {time}.", "qas": [
            {"id": f"{seed}-{i}", "question": f"When do {animal} hunt?", "answers": [{"text": time, "answer_start": 0}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "animals", "paragraphs": paragraphs}]}))
    return path


@pytest.mark.slow
def test_squad_recipe_runs_after_pretraining_and_is_evaluated_in_one_chain(small_overrides, tmp_path):
    train, val = squad_json(tmp_path / "train-v1.1.json", 64, 1), squad_json(tmp_path / "dev-v1.1.json", 8, 2)
    result = run_main([*small_overrides, "stages=[data_preparation,training,prompt_learning,evaluation]",
                       "model.tokenizer.library=byte", "model.encoder_seq_length=96", "model.max_position_embeddings=96",
                       "trainer.max_steps=4", "trainer.val_check_interval=4", "model.optim.sched.warmup_steps=1",
                       "training.progress_bar=false", "prompt_learning=squad",
                       f"prompt_learning.data.squad.train_file={train}",
                       f"prompt_learning.data.squad.validation_file={val}",
                       "prompt_learning.max_steps=3", "prompt_learning.micro_batch_size=4",
                       "prompt_learning.global_batch_size=8", "prompt_learning.val_check_interval=3",
                       "evaluation.prompt_table=${prompt_learning.output_dir}/prompt_table.pt",
                       "evaluation.max_batches=1",
                       "evaluation.generate.max_new_tokens=4"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "64 SQuAD train questions from" in result.stdout and "8 SQuAD validation questions" in result.stdout
    run_dir = tmp_path / "run"
    converted = [json.loads(line) for line in (run_dir / "prompt_data" / "squad_train.jsonl").read_text().splitlines()]
    assert len(converted) == 64 and converted[0]["taskname"] == "squad" and converted[0]["answers"]
    out_dir = run_dir / "prompt_learning"
    summary = json.loads((out_dir / "results.json").read_text())
    assert summary["steps"] == 3 and summary["tasks"] == ["squad"] and summary["squad"]["train"]["records"] == 64
    assert summary["validation"]["squad"]["examples"] == 8
    assert (out_dir / "prompts.pt").is_file() and (out_dir / "prompt_table.pt").is_file()
    assert len((out_dir / "metrics.jsonl").read_text().splitlines()) == 3
    assert "task squad accuracy" in result.stdout
    # The evaluation stage scored the learned prompts on the same validation records.
    evaluated = json.loads((run_dir / "eval.json").read_text())
    assert evaluated["prompt_tasks"]["squad"] == summary["validation"]["squad"]
    assert evaluated["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")


def test_config_errors_name_the_key(small_overrides):
    from nemo_llm.config import ConfigError, compose, validate

    cfg = compose([*small_overrides, "stages=[prompt_learning]", "prompt_learning=classification",
                   "prompt_learning.virtual_prompt_style=lora"])
    with pytest.raises(ConfigError, match="prompt_learning.virtual_prompt_style"):
        validate(cfg)
    cfg = compose([*small_overrides, "stages=[prompt_learning]", "prompt_learning.new_tasks=[]"])
    with pytest.raises(ConfigError, match="prompt_learning.new_tasks is empty"):
        validate(cfg)
    validate(compose([*small_overrides, "prompt_learning=squad", "stages=[prompt_learning]"]))


@pytest.mark.slow
def test_learned_prompts_through_evaluation_inference_and_the_server_at_tp2(trained, tmp_path):
    """The evaluation and inference stages take the prompt table at a tensor-parallel layout and answer
    as one process does; the REST server answers placeholder prompts."""
    from nemo_llm.inference import SamplingParams
    from nemo_llm.inference.client import GenerationClient
    from nemo_llm.inference.server import GenerationServer, ServerLimits
    from nemo_llm.prompt_learning.inference import prompt_engine, task_accuracy

    tmp, _, summary = trained["prompt-tuning"]
    table, val = summary["prompt_table"], tmp / "colour_val.jsonl"
    engine = prompt_engine(table)  # the base run's tokenizer
    expected = task_accuracy(engine, [json.loads(line) for line in val.read_text().splitlines()], max_new_tokens=4)
    assert expected["colour"]["accuracy"] > 0.9

    prompt = "<|colour:VIRTUAL_PROMPT_0|> <|colour:VIRTUAL_PROMPT_1|>hat a"
    run_dir = tmp_path / "run"
    result = run_main(["stages=[evaluation,inference]", f"run_dir={run_dir}", "model.tokenizer.library=byte",
                       "trainer.devices=2", "model.tensor_model_parallel_size=2", "trainer.accelerator=cpu",
                       f"evaluation.prompt_table={table}", f"evaluation.prompt_tasks.data={val}",
                       "evaluation.prompt_tasks.max_new_tokens=4", "evaluation.splits=[]",
                       "evaluation.generate.max_new_tokens=4", f"inference.prompt_table={table}",
                       f"inference.prompts=['{prompt}']", "inference.sampling.greedy=true",
                       "inference.sampling.max_new_tokens=3"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    evaluated = json.loads((run_dir / "eval.json").read_text())
    assert evaluated["checkpoint"] == str(tmp / "base_run/checkpoints/last.ckpt")  # the base the prompts name
    assert evaluated["prompt_tasks"] == expected
    assert "colour (prompts) | exact_match" in result.stdout
    generated = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert generated[0]["text"] == "yes" == engine.generate([prompt], SamplingParams(greedy=True, max_new_tokens=3))[0].text

    server = GenerationServer(engine, SamplingParams(max_new_tokens=3), ServerLimits(4, 8, 4096), port=0,
                              log_requests=False)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        answers = GenerationClient(server.url, timeout=60).generate([prompt, prompt.replace("hat a", "cup b")],
                                                                    greedy=True)
        assert [a["text"] for a in answers] == ["yes", "no"]
    finally:
        server.stop()
        thread.join(timeout=60)


def test_stages_refuse_a_missing_prompt_table(small_overrides, tmp_path):
    from nemo_llm.config import ConfigError, compose
    from nemo_llm.stages.evaluation import EvaluationStage
    from nemo_llm.stages.inference import InferenceStage

    missing = tmp_path / "prompt_table.pt"
    cfg = compose([*small_overrides, "stages=[evaluation,inference]", f"evaluation.prompt_table={missing}",
                   f"inference.prompt_table={missing}", "inference.prompts=[x]"])
    with pytest.raises(ConfigError, match=f"evaluation.prompt_table={missing}: no such file; run the prompt_learning"):
        EvaluationStage().check(cfg)
    with pytest.raises(ConfigError, match=f"inference.prompt_table={missing}: no such file"):
        InferenceStage().check(cfg)
    # Made by an earlier stage of the same run: fine.
    chained = compose([*small_overrides, "stages=[training,prompt_learning,evaluation]",
                       f"evaluation.prompt_table={missing}", "evaluation.prompt_tasks.data=null"])
    EvaluationStage().check(chained)

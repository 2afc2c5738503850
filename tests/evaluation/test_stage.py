"""The evaluation stage through main.py on a tiny trained run: every task from local data, document and
held-out perplexity, the same numbers in process and at tensor parallel size 2."""

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

import nemo_llm
from nemo_llm.config import ConfigError, compose
from nemo_llm.config.validation import parse_splits
from nemo_llm.data.gpt_dataset import build_gpt_datasets, collate_samples
from nemo_llm.evaluation.harness import evaluate_tasks, table_rows
from nemo_llm.evaluation.tasks import TASK_NAMES, prepare_task
from nemo_llm.inference import InferenceEngine
from nemo_llm.models.gpt import gpt_loss
from nemo_llm.stages.evaluation import EvaluationError, EvaluationInputs, EvaluationStage, evaluation_worker
from tests.conftest import SMALL, run_main
from tests.evaluation.conftest import TASK_DATA
from tests.evaluation.test_tasks import RECORDS

# SMALL with a byte tokenizer (nothing to train) and a context of 64 tokens, so that every answer of
# tests/data/eval_tasks fits; training still uses 32-token samples.
MODEL = [o for o in SMALL if not o.startswith("model.max_position_embeddings")] + [
    "model.max_position_embeddings=64", "model.tokenizer.library=byte"]
TRAIN = ["stages=[data_preparation,training]", "trainer.max_steps=10", "trainer.val_check_interval=10",
         "trainer.limit_val_batches=1", "training.checkpoint.every_n_train_steps=10", "training.progress_bar=false",
         "model.optim.sched.warmup_steps=2"]
DOCUMENTS = ["The quick brown fox jumps over the lazy dog. " * 3, "A short one.", "Another document, of a few words."]
FEWSHOT = {"num_fewshot": 1, "fewshot_seed": 5}


def run_small(args):
    """main.py with one thread per process: a model this small runs no faster on more threads, and
    much slower on a busy machine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        return run_main(args)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    corpus = root / "corpus.jsonl"  # smaller than the embedded corpus: quicker to prepare
    corpus.write_text("".join(json.dumps({"text": f"Document {i}: the quick brown fox jumps over the lazy dog "
                                                  f"{i % 7} times, and the cat sleeps."}) + "\n" for i in range(300)))
    run_dir = root / "run"
    trained = run_small([*MODEL, f"run_dir={run_dir}", f"data_preparation.input={corpus}", *TRAIN])
    assert trained.returncode == 0, trained.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    path = tmp_path_factory.mktemp("documents") / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCUMENTS))
    return path


def evaluation_args(run_dir, documents):
    return [*MODEL, f"run_dir={run_dir}", "stages=[evaluation]", f"evaluation.tasks=[{','.join(TASK_NAMES)}]",
            f"evaluation.data_dir={TASK_DATA}", f"evaluation.num_fewshot={FEWSHOT['num_fewshot']}",
            f"evaluation.fewshot_seed={FEWSHOT['fewshot_seed']}", f"evaluation.perplexity.input={documents}",
            "evaluation.perplexity.json_key=body", "evaluation.perplexity.stride=16", "evaluation.max_batches=2",
            "evaluation.batch_size=3", "evaluation.generate.max_new_tokens=8"]


@pytest.fixture(scope="module")
def tp1(run_dir, documents):
    result = run_small(evaluation_args(run_dir, documents))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads((run_dir / "eval.json").read_text())


@pytest.mark.slow
def test_eval_json_and_table(tp1):
    stdout, evaluation = tp1
    assert evaluation["step"] == 10
    assert evaluation["layout"] == {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1,
                                    "data_parallel_size": 1}
    for split in ("validation", "test"):
        assert evaluation[split]["samples"] == 8 and evaluation[split]["tokens"] == 8 * 32
        assert evaluation[split]["batches"] == 2
        assert evaluation[split]["perplexity"] == pytest.approx(math.exp(evaluation[split]["loss"]))
    documents = evaluation["perplexity"]
    assert documents["documents"] == 3 and documents["stride"] == 16
    assert documents["tokens"] == documents["bytes"] == sum(len(d) for d in DOCUMENTS)  # byte tokenizer
    assert documents["bits_per_byte"] == pytest.approx(math.log2(documents["token_perplexity"]))
    assert list(evaluation["tasks"]) == list(TASK_NAMES)
    for name, metrics in evaluation["tasks"].items():
        assert metrics["n"] == RECORDS[name] and metrics["num_fewshot"] == 1
        assert 0.0 <= metrics["acc"] <= 1.0
        assert ("acc_norm" in metrics) == (name not in ("lambada", "winogrande"))
    assert evaluation["tasks"]["lambada"]["perplexity"] > 1.0
    assert evaluation["generation"]["text"].startswith("The")
    assert len(evaluation["generation"]["continuation"]) > 0
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("task "))
    assert [cell.strip() for cell in lines[header].split("|")] == ["task", "metric", "value", "stderr", "n"]
    names = [line.split("|")[0].strip() for line in lines[header + 2:header + 2 + len(table_rows(evaluation))]]
    assert names[:2] == ["validation", "validation"] and names[-1] == "wic"
    assert "hellaswag  | acc_norm" in stdout and "documents  | bits_per_byte" in stdout


@pytest.mark.slow
def test_stage_numbers_equal_direct_computation(tp1, run_dir):
    _, evaluation = tp1
    model, tokenizer = nemo_llm.load(run_dir)
    engine = InferenceEngine.from_model(model, tokenizer)
    prepared = [prepare_task(name, TASK_DATA, **FEWSHOT) for name in TASK_NAMES]
    direct = evaluate_tasks(engine, prepared, batch_size=5)
    for name in TASK_NAMES:
        for metric, value in direct[name].items():
            assert evaluation["tasks"][name][metric] == pytest.approx(value, rel=1e-6), (name, metric)

    # held-out loss: the model's mean cross-entropy over the first 8 validation samples
    cfg = OmegaConf.load(run_dir / "config.yaml")
    datasets = build_gpt_datasets(cfg.model.data.data_prefix, parse_splits(cfg.model.data.splits_string), 32,
                                  cfg.seed, splits=("validation",))
    batch = collate_samples([datasets["validation"][i] for i in range(8)])
    with torch.no_grad():
        loss = gpt_loss(model(batch["tokens"]), batch["labels"]).item()
    assert evaluation["validation"]["loss"] == pytest.approx(loss, abs=1e-5)


def numbers(tree, path=""):
    """{path: value} of every float in a results tree."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in numbers(value, f"{path}.{key}").items()}
    return {path: tree} if isinstance(tree, float) else {}


@pytest.mark.slow
def test_tensor_parallel_gives_the_numbers_of_one_process(tp1, run_dir, documents):
    _, one_process = tp1
    result = run_small([*evaluation_args(run_dir, documents), "trainer.devices=2",
                        "model.tensor_model_parallel_size=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    tp2 = json.loads((run_dir / "eval.json").read_text())
    assert tp2["layout"]["tensor_model_parallel_size"] == 2
    ours, theirs = numbers(tp2), numbers(one_process)
    assert ours.keys() == theirs.keys() and len(ours) > 40
    for key, value in theirs.items():
        if "perplexity" in key:  # compare perplexities in log space: exp() magnifies float noise
            assert math.log(ours[key]) == pytest.approx(math.log(value), abs=1e-4), key
        else:
            assert ours[key] == pytest.approx(value, abs=1e-4), key
    assert tp2["generation"]["continuation"] == one_process["generation"]["continuation"]


@pytest.mark.slow
def test_missing_task_data_stops_before_the_model_loads(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no waiting on network retries
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    result = run_small([*MODEL, f"run_dir={run_dir}", "stages=[evaluation]", "evaluation.tasks=[boolq]",
                        f"evaluation.data_dir={tmp_path}"])
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: stage evaluation: task boolq: no data for split validation: "
                           f"{tmp_path / 'boolq' / 'validation.jsonl'} does not exist, and the hub dataset "
                           "aps/super_glue (boolq) could not be loaded")


def test_perplexity_input_that_matches_no_file_is_refused(tmp_path):
    cfg = compose([f"evaluation.perplexity.input={tmp_path}/*.jsonl"])
    with pytest.raises(ConfigError, match=r"^evaluation.perplexity.input: .*\*.jsonl matches no file$"):
        EvaluationStage().check(cfg)
    (tmp_path / "a.jsonl").write_text("{}\n")
    EvaluationStage().check(cfg)


def worker_config(overrides):
    return OmegaConf.to_yaml(compose([*MODEL, *overrides]), resolve=True)


@pytest.mark.slow
def test_another_run_dir_without_a_corpus_skips_the_held_out_splits(run_dir, tmp_path, capsys):
    config = worker_config([f"run_dir={tmp_path}", f"evaluation.checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}",
                            "evaluation.generate.max_new_tokens=1000"])
    result = evaluation_worker(config, EvaluationInputs())
    assert "validation" not in result and "tasks" not in result and result["step"] == 10
    assert json.loads((tmp_path / "eval.json").read_text()) == result
    assert "held-out splits skipped" in capsys.readouterr().out
    # max_new_tokens is cut to what fits the context after the prompt ("The": 3 byte tokens)
    assert result["generation"]["sampling"]["max_new_tokens"] == 64 - 3


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("evaluation.perplexity.stride=65", "evaluation.perplexity.stride=65 exceeds the model's context of 64 tokens"),
    ("evaluation.generate.prompt=" + "x" * 64, "evaluation.generate.prompt has 64 tokens, which fill the model's "
                                               "context of 64: shorten it"),
], ids=["stride", "prompt"])
def test_settings_that_do_not_fit_the_model_are_refused(run_dir, tmp_path, override, message):
    config = worker_config([f"run_dir={tmp_path}", f"evaluation.checkpoint={run_dir}", override])
    with pytest.raises(EvaluationError, match=message):
        evaluation_worker(config, EvaluationInputs())
    assert not (tmp_path / "eval.json").exists()

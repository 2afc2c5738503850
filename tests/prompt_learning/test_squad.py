"""SQuAD for the squad recipe: conversion from local SQuAD json, from jsonl in the hub's columns and
from the hub (faked here: no network), SQuAD's metrics, and the errors."""

import json

import pytest

from nemo_llm.prompt_learning.data import read_jsonl
from nemo_llm.prompt_learning.squad import SquadError, convert_squad, exact_match, f1_score, normalize_answer

SQUAD_V2 = {"version": "v2.0", "data": [
    {"title": "Rivers", "paragraphs": [
        {"context": "The Nile flows north into the Mediterranean Sea.",
         "qas": [{"id": "q1", "question": "Where does the Nile flow?",
                  "answers": [{"text": "into the Mediterranean Sea", "answer_start": 20},
                              {"text": "the Mediterranean Sea", "answer_start": 25}]},
                 {"id": "q2", "question": "Who built the Nile?", "answers": [], "is_impossible": True}]}]},
    {"title": "Birds", "paragraphs": [
        {"context": " Owls hunt at night. ",
         "qas": [{"id": "q3", "question": " When do owls hunt? ", "answers": [{"text": "at night", "answer_start": 11}]}]}]},
]}


def test_local_squad_json_becomes_records_with_every_answer(tmp_path):
    source = tmp_path / "dev-v2.0.json"
    source.write_text(json.dumps(SQUAD_V2))
    counts = convert_squad(str(source), "validation", tmp_path / "out" / "val.jsonl")
    assert counts == {"records": 2, "unanswerable": 1}
    records = read_jsonl(tmp_path / "out" / "val.jsonl")
    assert records[0] == {"taskname": "squad", "id": "q1", "context": "The Nile flows north into the Mediterranean Sea.",
                          "question": "Where does the Nile flow?", "answer": "into the Mediterranean Sea",
                          "answers": ["into the Mediterranean Sea", "the Mediterranean Sea"]}
    assert records[1]["question"] == "When do owls hunt?" and records[1]["context"] == "Owls hunt at night."


def test_jsonl_in_the_hub_columns_and_the_hub_itself(tmp_path, monkeypatch):
    row = {"id": "a", "title": "t", "context": "Paris is in France.", "question": "Where is Paris?",
           "answers": {"text": ["France"], "answer_start": [12]}}
    source = tmp_path / "train.jsonl"
    source.write_text(json.dumps(row) + "\n\n")
    convert_squad(str(source), "train", tmp_path / "a.jsonl", taskname="qa")
    assert read_jsonl(tmp_path / "a.jsonl") == [{"taskname": "qa", "id": "a", "context": "Paris is in France.",
                                                 "question": "Where is Paris?", "answer": "France",
                                                 "answers": ["France"]}]

    import datasets

    asked = []

    def load_dataset(name, split):
        asked.append((name, split))
        return [row]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    convert_squad("squad", "train", tmp_path / "b.jsonl")
    assert asked == [("squad", "train")] and read_jsonl(tmp_path / "b.jsonl")[0]["answer"] == "France"


def test_unreadable_sources_are_refused_and_nothing_is_written(tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    with pytest.raises(SquadError, match="no such file"):
        convert_squad(str(tmp_path / "missing.json"), "train", out)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SquadError, match="bad.json: not a SQuAD json file"):
        convert_squad(str(tmp_path / "bad.json"), "train", out)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SquadError, match='expected {"data": \\[articles\\]}'):
        convert_squad(str(tmp_path / "list.json"), "train", out)
    broken = {"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q", "answers": [{"text": 3}]}]}]}]}
    (tmp_path / "types.json").write_text(json.dumps(broken))
    with pytest.raises(SquadError, match="article 0, paragraph 0, question 0: answers must be a list of texts"):
        convert_squad(str(tmp_path / "types.json"), "train", out)
    (tmp_path / "bad.jsonl").write_text('{"context": "c"}\n{oops\n')
    with pytest.raises(SquadError, match="bad.jsonl:1: no question text"):
        convert_squad(str(tmp_path / "bad.jsonl"), "train", out)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))

    import datasets

    def offline(name, split):
        raise ConnectionError("Couldn't reach 'squad' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SquadError, match="'squad' \\(split train\\) could not be loaded \\(ConnectionError: .*give a "
                                         "local SQuAD .json or .jsonl file instead"):
        convert_squad("squad", "train", out)


def test_squad_metrics():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert exact_match("the Denver Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0
    assert f1_score("Broncos", ["Denver Broncos"]) == pytest.approx(2 / 3)
    assert f1_score("Denver Broncos win", ["Broncos", "Denver Broncos"]) == pytest.approx(0.8)
    assert f1_score("cats", ["Denver Broncos"]) == 0.0
    assert f1_score("", ["the"]) == 1.0  # both normalise to nothing


def test_stage_checks_the_squad_files(small_overrides, tmp_path):
    from nemo_llm.config import ConfigError, compose
    from nemo_llm.stages.prompt_learning import PromptLearningStage

    base = tmp_path / "base.ckpt"
    base.write_bytes(b"")
    cfg = compose([*small_overrides, "stages=[prompt_learning]", "prompt_learning=squad",
                   f"prompt_learning.language_model_path={base}",
                   f"prompt_learning.data.squad.train_file={tmp_path / 'train-v1.1.json'}"])
    with pytest.raises(ConfigError, match="prompt_learning.data.squad.train_file=.*train-v1.1.json: no such file"):
        PromptLearningStage().check(cfg)
    (tmp_path / "train-v1.1.json").write_text(json.dumps(SQUAD_V2))
    PromptLearningStage().check(cfg)  # the jsonl files do not exist yet: the stage converts into them

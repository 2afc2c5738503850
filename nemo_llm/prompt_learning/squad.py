"""SQuAD for prompt learning: conversion into prompt-learning records, and SQuAD's answer metrics.

Sources, per split:
- a local SQuAD .json (v1.1 or v2.0: data -> paragraphs -> qas),
- a local .jsonl in the Hugging Face `squad` columns (id, title, context, question,
  answers {text, answer_start}),
- a Hugging Face dataset id (e.g. `squad`), loaded with datasets.load_dataset.

Each answerable question becomes {"taskname", "context", "question", "answer", "answers"}: training
learns the first answer, evaluation accepts any of them. Unanswerable questions (v2.0) are left out
and counted.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from nemo_llm.data.jsonl import jsonl_records
from nemo_llm.errors import NemoLLMError


class SquadError(NemoLLMError, ValueError):
    """A SQuAD source that cannot be read or converted."""


def _questions_of_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SquadError(f"{path}: not a SQuAD json file ({e})") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise SquadError(f'{path}: not a SQuAD json file: expected {{"data": [articles]}}')
    for a, article in enumerate(document["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            for q, qa in enumerate(paragraph.get("qas", [])):
                where = f"{path}: article {a}, paragraph {p}, question {q}"
                yield where, {"context": paragraph.get("context"), "question": qa.get("question"),
                              "answers": [x.get("text") for x in qa.get("answers", [])],
                              "id": qa.get("id")}


def _questions_of_rows(rows: Iterable[dict[str, Any]], name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, row in enumerate(rows):
        answers = row.get("answers")
        texts = answers.get("text") if isinstance(answers, dict) else None
        yield f"{name} row {i}", {"context": row.get("context"), "question": row.get("question"),
                                  "answers": texts, "id": row.get("id")}


def _questions_of_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, row in jsonl_records(path, SquadError):
        yield from ((where, q) for _, q in _questions_of_rows([row], str(path)))


def read_squad(source: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, {context, question, answers, id}) of each question of a local file or of a hub dataset's split."""
    path = Path(source)
    if path.suffix == ".json" or path.suffix == ".jsonl":
        if not path.is_file():
            raise SquadError(f"{path}: no such file")
        return _questions_of_json(path) if path.suffix == ".json" else _questions_of_jsonl(path)
    try:
        import datasets

        rows = datasets.load_dataset(source, split=split)
    except Exception as e:  # no network, no such dataset or split: the same advice
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SquadError(f"the Hugging Face dataset {source!r} (split {split}) could not be loaded "
                         f"({type(e).__name__}: {reason}); give a local SQuAD .json or .jsonl file instead") from None
    return _questions_of_rows(rows, f"{source} {split}")


def convert_squad(source: str, split: str, output: str | Path, taskname: str = "squad") -> dict[str, int]:
    """Write the prompt-learning records of a SQuAD source to output (jsonl, written whole or not at
    all); returns {records, unanswerable}."""
    output = Path(output)
    written = unanswerable = 0
    lines = []
    for where, q in read_squad(source, split):
        for key in ("context", "question"):
            if not isinstance(q[key], str) or not q[key].strip():
                raise SquadError(f"{where}: no {key} text")
        answers = q["answers"]
        if answers is None or not all(isinstance(a, str) for a in answers):
            raise SquadError(f"{where}: answers must be a list of texts")
        answers = [a.strip() for a in answers if a.strip()]
        if not answers:
            unanswerable += 1
            continue
        lines.append(json.dumps({"taskname": taskname, "id": q["id"], "context": q["context"].strip(),
                                 "question": q["question"].strip(), "answer": answers[0], "answers": answers}))
        written += 1
    if not written:
        raise SquadError(f"{source} ({split}): no answerable question")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.replace(output)
    return {"records": written, "unanswerable": unanswerable}


# --- SQuAD's metrics (exact match and token F1 after its answer normalisation) ---------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, without punctuation, articles and extra whitespace (SQuAD v1.1's evaluation)."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """The best token-overlap F1 of the prediction against any of the answers."""
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        truth = normalize_answer(answer).split()
        common = sum((Counter(predicted) & Counter(truth)).values())
        if not predicted or not truth:
            best = max(best, float(predicted == truth))
        elif common:
            precision, recall = common / len(predicted), common / len(truth)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best

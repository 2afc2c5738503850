"""Scoring prepared tasks (nemo_llm.evaluation.tasks) on an InferenceEngine, and the results table.

Metrics, per task:
- multiple choice: acc, the share of examples where the right choice has the highest total
  log-likelihood; acc_norm, the same with each choice's log-likelihood divided by the length of its
  continuation in characters (so that long answers are not penalised for having more tokens; a
  character count does not depend on the tokenizer). Each with its binomial standard error.
- LAMBADA (last word): acc, the share of passages whose last word greedy decoding reproduces
  token for token; perplexity, exp of the mean negative log-likelihood of the last word per passage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from nemo_llm.errors import NemoLLMError
from nemo_llm.evaluation.loglikelihood import LogLikelihood, encode_pair, loglikelihood
from nemo_llm.evaluation.tasks import LAST_WORD, TaskData
from nemo_llm.inference.engine import InferenceEngine

REQUEST_CHUNK = 1024  # requests scored per engine call: bounds the per-token scores held in memory


class TaskTooLongError(NemoLLMError, ValueError):
    """An answer longer than the model's whole context: it cannot be scored."""


def accuracy_stderr(hits: Sequence[bool]) -> float | None:
    """Standard error of a mean of 0/1 outcomes (sample variance); None for fewer than two."""
    n = len(hits)
    if n < 2:
        return None
    p = sum(hits) / n
    return math.sqrt(p * (1 - p) / (n - 1))


def score_pairs(engine: InferenceEngine, pairs: Sequence[tuple[list[int], list[int]]],
                batch_size: int = 8) -> list[LogLikelihood]:
    """loglikelihood() of (context ids, continuation ids) pairs, a chunk of requests at a time."""
    results: list[LogLikelihood] = []
    for start in range(0, len(pairs), REQUEST_CHUNK):
        results.extend(loglikelihood(engine, pairs[start:start + REQUEST_CHUNK], batch_size))
    return results


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # ties go to the first choice


def multiple_choice_metrics(scores: Sequence[Sequence[float]], lengths: Sequence[Sequence[int]],
                            golds: Sequence[int], length_normalized: bool = True) -> dict:
    """scores[e][c]: log-likelihood of choice c of example e; lengths[e][c]: its continuation's
    characters. -> {"acc", "acc_stderr", ["acc_norm", "acc_norm_stderr"], "n"}"""
    hits = [_argmax(s) == g for s, g in zip(scores, golds)]
    result = {"acc": sum(hits) / len(hits), "acc_stderr": accuracy_stderr(hits)}
    if length_normalized:
        hits_norm = [_argmax([v / max(n, 1) for v, n in zip(s, ls)]) == g for s, ls, g in zip(scores, lengths, golds)]
        result.update(acc_norm=sum(hits_norm) / len(hits_norm), acc_norm_stderr=accuracy_stderr(hits_norm))
    return {**result, "n": len(hits)}


def last_word_metrics(results: Sequence[LogLikelihood]) -> dict:
    """{"acc", "acc_stderr", "perplexity", "n"} of LAMBADA-style single-continuation examples."""
    hits = [r.is_greedy for r in results]
    mean_nll = -sum(r.logprob for r in results) / len(results)
    return {"acc": sum(hits) / len(hits), "acc_stderr": accuracy_stderr(hits),
            "perplexity": math.exp(min(mean_nll, 700.0)), "n": len(hits)}


def _encode(engine: InferenceEngine, data: TaskData) -> list[list[tuple[list[int], list[int]]]]:
    """Token ids of every (context, continuation) request, per example; refuses an answer that does
    not fit the model's context (a context that does not fit is cut from the left instead)."""
    encoded = []
    for index in range(len(data.examples)):
        pairs = [encode_pair(engine.tokenizer, context, continuation) for context, continuation in data.requests(index)]
        for choice, (_, continuation_ids) in enumerate(pairs):
            if len(continuation_ids) > engine.max_sequence_length:
                raise TaskTooLongError(
                    f"task {data.task.name}: choice {choice} of example {index} has {len(continuation_ids)} tokens, "
                    f"more than the model's context of {engine.max_sequence_length}: remove {data.task.name} from "
                    "evaluation.tasks")
        encoded.append(pairs)
    return encoded


def evaluate_task(engine: InferenceEngine, data: TaskData, batch_size: int = 8) -> dict:
    """Metrics of one prepared task (see the module docstring) and the number of shots used."""
    task = data.task
    if not data.examples:
        raise ValueError(f"task {task.name} has no examples")
    encoded = _encode(engine, data)
    results = score_pairs(engine, [pair for pairs in encoded for pair in pairs], batch_size)
    if task.kind == LAST_WORD:
        return {**last_word_metrics(results), "num_fewshot": data.num_fewshot}
    scores, lengths, start = [], [], 0
    for index, pairs in enumerate(encoded):
        scores.append([r.logprob for r in results[start:start + len(pairs)]])
        lengths.append([len(continuation) for _, continuation in data.requests(index)])
        start += len(pairs)
    golds = [example.gold for example in data.examples]
    return {**multiple_choice_metrics(scores, lengths, golds, task.length_normalized), "num_fewshot": data.num_fewshot}


def evaluate_tasks(engine: InferenceEngine, tasks: Sequence[TaskData], batch_size: int = 8,
                   log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """{task name: metrics} of each prepared task, in order; log (if given) gets a line per task."""
    results = {}
    for data in tasks:
        metrics = results[data.task.name] = evaluate_task(engine, data, batch_size)
        if log is not None:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in TASK_METRICS)
            log(f"{data.task.name}: {shown} over {metrics['n']} examples")
    return results


# --- the table ---------------------------------------------------------------------------------------

SPLIT_METRICS = ("loss", "perplexity")
DOCUMENT_METRICS = ("token_perplexity", "word_perplexity", "bits_per_byte")
TASK_METRICS = ("acc", "acc_norm", "perplexity")
PROMPT_TASK_METRICS = ("accuracy", "exact_match", "f1")  # of learned-prompt tasks (nemo_llm.prompt_learning)


def table_rows(results: dict) -> list[tuple[str, str, float, float | None, int]]:
    """(name, metric, value, stderr, n) of everything an eval.json holds: held-out splits (n: samples),
    document perplexity (n: documents) and tasks (n: examples)."""
    rows = []
    for split in ("validation", "test"):
        if results.get(split):
            rows += [(split, m, results[split][m], None, results[split]["samples"]) for m in SPLIT_METRICS]
    documents = results.get("perplexity")
    if documents:
        rows += [("documents", m, documents[m], None, documents["documents"]) for m in DOCUMENT_METRICS]
    for name, metrics in results.get("tasks", {}).items():
        rows += [(name, m, metrics[m], metrics.get(f"{m}_stderr"), metrics["n"]) for m in TASK_METRICS if m in metrics]
    for name, metrics in results.get("prompt_tasks", {}).items():
        rows += [(f"{name} (prompts)", m, metrics[m], None, metrics["examples"]) for m in PROMPT_TASK_METRICS]
    return rows


def _number(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4e}"


def format_table(results: dict) -> str:
    """The results as an aligned text table: task | metric | value | stderr | n."""
    header = ("task", "metric", "value", "stderr", "n")
    lines = [header] + [(name, metric, _number(value), "-" if stderr is None else _number(stderr), str(n))
                        for name, metric, value, stderr, n in table_rows(results)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    aligned = [" | ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
               for line in lines]
    return "\n".join([aligned[0], "-+-".join("-" * w for w in widths), *aligned[1:]])

"""Data preparation at scale: sources -> tokenizer -> shards -> one Megatron indexed dataset.

The document stream (all sources in order) is cut into shards: one per source, or one per N
documents. Worker processes tokenize shards into <output>_shards/<plan>/shard_NNNNN.{bin,idx};
a shard is complete once its .idx exists (written last, by rename). A re-run of the same plan
(same inputs, tokenizer and settings) skips complete shards, so a killed run resumes where it
stopped. The shards are then merged in order, so the result does not depend on the number of
workers, and removed.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nemo_llm.data.indexed_dataset import (IndexedDataset, IndexedDatasetError, IndexedDatasetWriter,
                                           merge_indexed_datasets, token_dtype)
from nemo_llm.data.sources import Position, Source, read_documents
from nemo_llm.tokenizers import Tokenizer, build_tokenizer

BATCH_CHARACTERS = 4 << 20  # text handed to the tokenizer at once: bounds a worker's memory


@dataclass(frozen=True)
class Shard:
    """`count` documents from `start` (None: to the end of the start's source)."""

    index: int
    start: Position
    count: int | None


def plan_shards(sources: Sequence[Source], shard_documents: int | None) -> list[Shard]:
    """One shard per source, or one per `shard_documents` documents of the whole stream."""
    if shard_documents is None:
        return [Shard(i, Position(i), None) for i in range(len(sources))]
    starts: list[Position] = []
    seen = 0
    for index, source in enumerate(sources):
        for position in source.positions(index):
            if seen % shard_documents == 0:
                starts.append(position)
            seen += 1
    return [Shard(i, start, shard_documents) for i, start in enumerate(starts)]


def shard_documents_of(sources: Sequence[Source], shard: Shard) -> Iterator[str]:
    """The documents of one shard."""
    if shard.count is None:
        return sources[shard.start.source].documents(shard.start)
    return read_documents(sources, shard.start, shard.count)


def _batches(documents: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    characters = 0
    for text in documents:
        batch.append(text)
        characters += len(text)
        if characters >= BATCH_CHARACTERS:
            yield batch
            batch, characters = [], 0
    if batch:
        yield batch


def write_indexed_dataset(documents: Iterable[str], tokenizer: Tokenizer, prefix: str | Path,
                          append_eod: bool = True) -> dict[str, int]:
    """Tokenize each document into one sequence of <prefix>.bin/.idx; returns counts. A document
    that tokenizes to nothing (empty, without EOD) is left out. On any error nothing is left
    under the final names."""
    writer = IndexedDatasetWriter(prefix, dtype=token_dtype(tokenizer.vocab_size))
    num_documents = num_tokens = 0
    try:
        for batch in _batches(documents):
            for ids in tokenizer.encode_batch(batch):
                if append_eod:
                    ids.append(tokenizer.eod_id)
                if not ids:
                    continue
                writer.add_document(ids)
                num_documents += 1
                num_tokens += len(ids)
    except BaseException:
        writer.abort()
        raise
    writer.finalize()
    return {"documents": num_documents, "tokens": num_tokens}


_worker_tokenizers: dict[str, Tokenizer] = {}


def _tokenize_shard(sources: Sequence[Source], shard: Shard, tokenizer_cfg: Mapping, prefix: Path,
                    append_eod: bool) -> dict[str, int]:
    """Runs in a worker process: each process builds its tokenizer once."""
    key = json.dumps(dict(tokenizer_cfg), sort_keys=True)
    if key not in _worker_tokenizers:
        _worker_tokenizers[key] = build_tokenizer(dict(tokenizer_cfg))
    start = time.perf_counter()
    counts = write_indexed_dataset(shard_documents_of(sources, shard), _worker_tokenizers[key],
                                   prefix, append_eod)
    return {**counts, "seconds": time.perf_counter() - start}


def _single_threaded() -> None:
    # One worker per core: the HF tokenizers library must not start a thread per core in each.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _is_complete(prefix: Path) -> bool:
    try:
        IndexedDataset(prefix)
    except IndexedDatasetError:
        return False
    return True


def _tokenizer_identity(cfg: Mapping) -> dict:
    identity = dict(cfg)
    for key in ("model", "vocab_file", "merge_file"):
        path = cfg.get(key)
        if path and os.path.isfile(path):
            stat = os.stat(path)
            identity[f"{key}_file"] = [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]
    return identity


def plan_digest(sources: Sequence[Source], tokenizer_cfg: Mapping, append_eod: bool,
                shard_documents: int | None) -> str:
    """A fingerprint of everything that decides the output's bytes."""
    plan = {"sources": [s.identity() for s in sources], "tokenizer": _tokenizer_identity(tokenizer_cfg),
            "append_eod": append_eod, "shard_documents": shard_documents}
    return hashlib.sha1(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]


def preprocess(sources: Sequence[Source], tokenizer_cfg: Mapping, output_prefix: str | Path, append_eod: bool = True,
               workers: int = 1, shard_documents: int | None = None, log=print,
               share: tuple[int, int] | None = None) -> dict:
    """Tokenize `sources` into <output_prefix>.bin/.idx with `workers` processes; returns counts.

    An output whose manifest (<output_prefix>.json) records the same plan is left as it is.
    share=(i, n): tokenize only the shards whose index is i modulo n and stop before the merge (one
    task of a job array; a later run without share merges, skipping the complete shards).
    """
    output_prefix = Path(output_prefix)
    digest = plan_digest(sources, tokenizer_cfg, append_eod, shard_documents)
    manifest_path = Path(f"{output_prefix}.json")
    if manifest_path.is_file() and _is_complete(output_prefix):
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("plan") == digest:
            log(f"{output_prefix}.bin/.idx already prepared from these inputs and settings")
            return {**manifest["counts"], "shards": manifest["shards"], "skipped": True}

    shards_root = Path(f"{output_prefix}_shards")
    shard_dir = shards_root / digest
    if shards_root.is_dir() and share is None:  # shards of another plan can never be used again
        for stale in shards_root.iterdir():
            if stale != shard_dir:
                shutil.rmtree(stale, ignore_errors=True)
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(sources, shard_documents)
    prefixes = [shard_dir / f"shard_{s.index:05d}" for s in shards]
    todo = [(s, p) for s, p in zip(shards, prefixes) if not _is_complete(p)]
    if len(todo) < len(shards):
        log(f"resuming: {len(shards) - len(todo)} of {len(shards)} shards already complete in {shard_dir}")
    if share is not None:
        index, count = share
        todo = [(s, p) for s, p in todo if s.index % count == index]
        _run_shards(sources, todo, tokenizer_cfg, append_eod, workers, log)
        return {"documents": 0, "tokens": 0, "shards": len(todo), "skipped": False, "merged": False}
    _run_shards(sources, todo, tokenizer_cfg, append_eod, workers, log)

    merge_indexed_datasets(prefixes, output_prefix)
    merged = IndexedDataset(output_prefix)
    counts = {"documents": len(merged), "tokens": int(merged.sizes.astype(np.int64).sum())}
    tmp = manifest_path.with_name(manifest_path.name + ".tmp")
    tmp.write_text(json.dumps({"plan": digest, "counts": counts, "shards": len(shards)}, indent=1))
    tmp.replace(manifest_path)
    shutil.rmtree(shards_root, ignore_errors=True)
    return {**counts, "shards": len(shards), "skipped": False}


def _run_shards(sources: Sequence[Source], todo: list[tuple[Shard, Path]], tokenizer_cfg: Mapping,
                append_eod: bool, workers: int, log) -> None:
    tokenizer_cfg = dict(tokenizer_cfg)
    done, started = 0, time.perf_counter()

    def report(shard: Shard, counts: dict) -> None:
        nonlocal done
        done += 1
        rate = counts["tokens"] / max(counts["seconds"], 1e-9)
        log(f"shard {shard.index}: {counts['documents']} documents, {counts['tokens']} tokens "
            f"({rate:,.0f} tokens/s) [{done}/{len(todo)}, {time.perf_counter() - started:.0f}s]")

    if workers <= 1 or len(todo) <= 1:
        for shard, prefix in todo:
            report(shard, _tokenize_shard(sources, shard, tokenizer_cfg, prefix, append_eod))
        return
    # fork on Linux: spawn and forkserver children re-import the parent's main module, which for
    # main.py means torch, about 2 s per worker. Workers use no torch and no threads inherited
    # from the parent (HF tokenizers turns its own pool off in a forked child that needs it).
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context,
                             initializer=_single_threaded) as pool:
        futures = {pool.submit(_tokenize_shard, sources, shard, tokenizer_cfg, prefix, append_eod): shard
                   for shard, prefix in todo}
        try:
            for future in as_completed(futures):
                report(futures[future], future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


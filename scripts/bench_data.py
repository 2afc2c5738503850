"""Data pipeline benchmarks: tokenization throughput and random GPT sample reads.

    python scripts/bench_data.py                 # the figures in docs/benchmarks.md
    python scripts/bench_data.py --tiny          # seconds; what the test suite runs

Tokenization runs the real data_preparation path (sources -> shards -> workers -> merge) on the
embedded English corpus repeated to --text-mb, with a sentencepiece BPE trained on it and a GPT-2
style byte-level BPE (HF tokenizers) trained on it: tokens/s of one worker's shard time, and of
the whole run's wall time with one and with two workers. Sample reads time GPTDataset[i] of
--seq-length + 1 tokens at random i over a --tokens-M token corpus, in one process. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_llm.data.corpus import embedded_documents  # noqa: E402
from nemo_llm.data.gpt_dataset import GPTDataset  # noqa: E402
from nemo_llm.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter  # noqa: E402
from nemo_llm.data.preprocess import preprocess  # noqa: E402
from nemo_llm.data.sources import build_sources  # noqa: E402
from nemo_llm.tokenizers import train_sentencepiece  # noqa: E402


def write_corpus(directory: Path, megabytes: float, files: int) -> tuple[Path, int]:
    """The embedded corpus repeated to about `megabytes` of jsonl, spread over `files` files."""
    documents = list(embedded_documents())
    target = int(megabytes * 2**20)
    written, k = 0, 0
    outs = [open(directory / f"part{i:02d}.jsonl", "w", encoding="utf-8") for i in range(files)]
    while written < target:
        text = documents[k % len(documents)]
        outs[k % files].write(json.dumps({"text": text}) + "\n")
        written += len(text.encode())
        k += 1
    for out in outs:
        out.close()
    return directory, written


def train_gpt2_bpe(directory: Path, vocab_size: int) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(embedded_documents(), trainer)
    path = directory / "tokenizer.json"
    tokenizer.save(str(path))
    return {"library": "huggingface", "model": str(path)}


def bench_tokenization(work: Path, tokenizer_cfg: dict, inputs: Path, workers: int) -> dict:
    lines: list[str] = []
    output = work / f"out_{tokenizer_cfg['library']}_{workers}" / "x"
    start = time.perf_counter()
    counts = preprocess(build_sources(str(inputs / "*.jsonl")), tokenizer_cfg, output, workers=workers,
                        log=lines.append)
    wall = time.perf_counter() - start
    shard_rates = [float(line.split("(")[1].split(" tokens/s")[0].replace(",", "")) for line in lines
                   if "tokens/s" in line]
    return {"workers": workers, "tokens": counts["tokens"], "wall_s": round(wall, 2),
            "tokens_per_s_wall": round(counts["tokens"] / wall),
            "tokens_per_s_per_worker_median_shard": round(float(np.median(shard_rates)))}


def bench_sample_reads(work: Path, tokens_m: float, seq_length: int, reads: int, seed: int = 0) -> dict:
    rng = np.random.RandomState(seed)
    writer = IndexedDatasetWriter(work / "reads", dtype=np.uint16)
    total = 0
    while total < tokens_m * 1e6:
        n = int(rng.lognormal(6.5, 1.0)) + 1  # document lengths of web text: median ~700 tokens
        writer.add_document(rng.randint(0, 50257, size=n, dtype=np.uint16))
        total += n
    writer.finalize()
    indexed = IndexedDataset(work / "reads")
    dataset = GPTDataset(indexed, np.arange(len(indexed)), seq_length, None, seed, index_dir=work)
    order = rng.randint(0, len(dataset), size=reads)
    for i in order[:1000]:  # the first touches of the memory map are page faults, not reads
        dataset[int(i)]
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for i in order:
            dataset[int(i)]
        best = max(best, reads / (time.perf_counter() - start))
    return {"corpus_tokens": total, "documents": len(indexed), "samples": len(dataset),
            "sample_tokens": seq_length + 1, "reads": reads, "samples_per_s": round(best)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-mb", type=float, default=32.0)
    parser.add_argument("--files", type=int, default=8, help="input files = shards")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--tokens-M", type=float, default=200.0)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--reads", type=int, default=100_000)
    parser.add_argument("--tiny", action="store_true", help="a few seconds: the test suite's run")
    args = parser.parse_args(argv)
    if args.tiny:
        args.text_mb, args.files, args.vocab_size, args.tokens_M, args.reads = 0.5, 2, 1000, 0.5, 1000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs, text_bytes = write_corpus(Path(tempfile.mkdtemp(dir=work)), args.text_mb, args.files)
        sentencepiece = {"library": "sentencepiece", "model": str(work / "sp.model")}
        train_sentencepiece(embedded_documents(), work / "sp.model", args.vocab_size)
        gpt2 = train_gpt2_bpe(work, args.vocab_size)
        result = {"cpu_count": os.cpu_count(), "text_bytes": text_bytes, "vocab_size": args.vocab_size,
                  "tokenization": {name: [bench_tokenization(work, cfg, inputs, w) for w in (1, 2)]
                                   for name, cfg in (("sentencepiece_bpe", sentencepiece), ("gpt2_bpe", gpt2))},
                  "sample_reads": bench_sample_reads(work, args.tokens_M, args.seq_length, args.reads)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

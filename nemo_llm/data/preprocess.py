"""Data preparation: text and jsonl files -> tokenizer -> Megatron indexed dataset."""

from __future__ import annotations

import glob
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from nemo_llm.data.corpus import embedded_documents
from nemo_llm.errors import NemoLLMError
from nemo_llm.data.indexed_dataset import IndexedDatasetWriter, token_dtype
from nemo_llm.tokenizers import Tokenizer


class InputError(NemoLLMError, ValueError):
    """Input files that cannot be read as documents; the message names the file (and line)."""


def resolve_inputs(inputs: str | Sequence[str] | None) -> list[Path]:
    """Paths, globs or a list of them -> sorted existing files. None means the embedded corpus."""
    if inputs is None:
        return []
    patterns = [inputs] if isinstance(inputs, str) else list(inputs)
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(pattern), recursive=True))
        if not matches:
            raise InputError(f"data_preparation.input: {pattern} matches no file")
        for match in matches:
            path = Path(match)
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


def read_documents(files: Sequence[Path], json_key: str = "text") -> Iterator[str]:
    """A .jsonl file gives one document per line (its json_key field); any other file is one document.
    With no files, the embedded corpus."""
    if not files:
        yield from embedded_documents()
        return
    for path in files:
        if path.suffix in (".jsonl", ".json"):
            yield from _read_jsonl(path, json_key)
        else:
            yield "".join(_decoded_lines(path))


def _decoded_lines(path: Path) -> Iterator[str]:
    """The file's lines as text. Bytes that are not UTF-8 become U+FFFD, and the first such line is
    reported (one warning per file) rather than stopping a run over a few bad bytes."""
    first_bad = None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                first_bad = first_bad or number
                yield raw.decode("utf-8", errors="replace")
    if first_bad is not None:
        warnings.warn(f"{path}:{first_bad}: invalid UTF-8 (replaced by U+FFFD from this line on where it occurs)",
                      stacklevel=2)


def _read_jsonl(path: Path, json_key: str) -> Iterator[str]:
    for number, line in enumerate(_decoded_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or json_key not in record:
            raise InputError(f"{path}:{number}: no '{json_key}' field (set data_preparation.json_key)")
        if not isinstance(record[json_key], str):
            raise InputError(f"{path}:{number}: '{json_key}' is {type(record[json_key]).__name__}, not text")
        yield record[json_key]


def write_indexed_dataset(documents: Iterator[str], tokenizer: Tokenizer, prefix: str | Path,
                          append_eod: bool = True) -> dict[str, int]:
    """Tokenize each document into one sequence of <prefix>.bin/.idx; returns counts."""
    writer = IndexedDatasetWriter(prefix, dtype=token_dtype(tokenizer.vocab_size))
    num_documents = num_tokens = 0
    try:
        for text in documents:
            ids = tokenizer.encode(text)
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

"""Where documents come from: text, jsonl and parquet files (plain or .gz/.zst compressed),
Hugging Face datasets, or the embedded corpus.

Every source is a picklable description that multiprocessing workers open themselves, and can
start reading at a `Position`, so a shard of N documents is read without reading what is before
it (uncompressed jsonl seeks to a byte offset, parquet and HF datasets skip rows).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from nemo_llm.data.corpus import embedded_documents
from nemo_llm.errors import NemoLLMError

COMPRESSED = (".gz", ".zst")
JSONL_SUFFIXES = (".jsonl", ".json")


class InputError(NemoLLMError, ValueError):
    """Input that cannot be read as documents; the message names the file (and line or row)."""


@dataclass(frozen=True)
class Position:
    """Document `document` of source `source`; for uncompressed jsonl also where its line starts."""

    source: int
    document: int = 0
    byte_offset: int = 0
    line: int = 1


class Source(ABC):
    """Documents in a fixed order. `count()` is None when only reading them all can tell."""

    @abstractmethod
    def identity(self) -> dict:
        """What decides the documents' content; a change of it invalidates prepared shards."""

    @abstractmethod
    def documents(self, start: Position) -> Iterator[str]:
        """The documents from `start` to the end of this source."""

    def count(self) -> int | None:
        return None

    def positions(self, source_index: int) -> Iterator[Position]:
        """The start position of every document (for cutting shards of N documents)."""
        count = self.count()
        if count is not None:
            return (Position(source_index, k) for k in range(count))
        return (Position(source_index, k) for k, _ in enumerate(self.documents(Position(source_index))))


def _open_binary(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise InputError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _decode(path: Path, number: int, raw: bytes, warned: list[bool]) -> str:
    """A line as text. Bytes that are not UTF-8 become U+FFFD and the first such line of a file is
    reported, rather than stopping a run over a few bad bytes."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if not warned[0]:
            warned[0] = True
            warnings.warn(f"{path}:{number}: invalid UTF-8 (replaced by U+FFFD from this line on where it occurs)",
                          stacklevel=3)
        return raw.decode("utf-8", errors="replace")


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass(frozen=True)
class TextFile(Source):
    """A whole file is one document."""

    path: Path

    def identity(self) -> dict:
        return _file_identity(self.path)

    def count(self) -> int:
        return 1

    def documents(self, start: Position) -> Iterator[str]:
        if start.document > 0:
            return
        warned = [False]
        with _open_binary(self.path) as f:
            yield "".join(_decode(self.path, n, raw, warned) for n, raw in enumerate(f, start=1))


@dataclass(frozen=True)
class JsonlFile(Source):
    """One document per non-blank line: the line's `json_key` field."""

    path: Path
    json_key: str = "text"

    def identity(self) -> dict:
        return {**_file_identity(self.path), "json_key": self.json_key}

    @property
    def seekable(self) -> bool:
        return self.path.suffix not in COMPRESSED

    def _lines(self, start: Position) -> Iterator[tuple[int, int, bytes]]:
        """(byte offset, line number, raw line) of the non-blank lines from `start` on."""
        with _open_binary(self.path) as f:
            offset, number, skip = 0, 1, start.document
            if self.seekable:
                f.seek(start.byte_offset)
                offset, number, skip = start.byte_offset, start.line, 0
            for raw in f:
                if raw.strip():
                    if skip:
                        skip -= 1
                    else:
                        yield offset, number, raw
                offset += len(raw)
                number += 1

    def positions(self, source_index: int) -> Iterator[Position]:
        for k, (offset, number, _) in enumerate(self._lines(Position(source_index))):
            yield Position(source_index, k, offset, number)

    def documents(self, start: Position) -> Iterator[str]:
        warned = [False]
        for _, number, raw in self._lines(start):
            line = _decode(self.path, number, raw, warned)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{self.path}:{number}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or self.json_key not in record:
                raise InputError(f"{self.path}:{number}: no '{self.json_key}' field (set data_preparation.json_key)")
            yield _text(record[self.json_key], f"{self.path}:{number}: '{self.json_key}'")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where} is {type(value).__name__}, not text")
    return value


def _check_column(columns: Sequence[str], json_key: str, where: str) -> None:
    if json_key not in columns:
        raise InputError(f"{where}: no '{json_key}' column (columns: {', '.join(columns)}); "
                         "set data_preparation.json_key")


@dataclass(frozen=True)
class ParquetFile(Source):
    """One document per row: the row's `json_key` column."""

    path: Path
    json_key: str = "text"

    def identity(self) -> dict:
        return {**_file_identity(self.path), "json_key": self.json_key}

    def _open(self):
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises several types for a file that is not parquet
            raise InputError(f"{self.path}: not a readable parquet file ({e})") from None
        _check_column(parquet.schema_arrow.names, self.json_key, str(self.path))
        return parquet

    def count(self) -> int:
        return self._open().metadata.num_rows

    def documents(self, start: Position) -> Iterator[str]:
        row = 0
        for batch in self._open().iter_batches(batch_size=1024, columns=[self.json_key]):
            if row + batch.num_rows <= start.document:
                row += batch.num_rows
                continue
            for value in batch.column(0).to_pylist():
                if row >= start.document:
                    yield _text(value, f"{self.path}: row {row}: '{self.json_key}'")
                row += 1


@dataclass(frozen=True)
class HFDataset(Source):
    """A Hugging Face dataset: a hub name or a local folder or script for `datasets.load_dataset`,
    or a folder written by `save_to_disk`. A streaming dataset is read in its own shards
    (`shard` = (index, count)), one source each, since it cannot be indexed."""

    path: str
    name: str | None = None
    split: str = "train"
    data_files: Any = None
    streaming: bool = False
    cache_dir: str | None = None
    json_key: str = "text"
    shard: tuple[int, int] | None = None
    fingerprint: str | None = field(default=None, compare=False)

    def _load(self):
        import datasets

        where = f"data_preparation.hf_dataset.path={self.path}"
        try:
            if os.path.isfile(os.path.join(self.path, "state.json")) or os.path.isfile(
                    os.path.join(self.path, "dataset_dict.json")):
                loaded = datasets.load_from_disk(self.path)
                dataset = loaded[self.split] if isinstance(loaded, datasets.DatasetDict) else loaded
            else:
                dataset = datasets.load_dataset(self.path, self.name, split=self.split, data_files=self.data_files,
                                                streaming=self.streaming, cache_dir=self.cache_dir)
        except KeyError:
            raise InputError(f"{where}: no split '{self.split}' (set data_preparation.hf_dataset.split)") from None
        except Exception as e:  # hub, network and format errors come in many types
            raise InputError(f"{where}: cannot load the dataset ({type(e).__name__}: {e})") from None
        columns = dataset.column_names or []
        if columns:  # streaming datasets may not know their columns before reading
            _check_column(columns, self.json_key, where)
        if self.shard is not None:
            dataset = dataset.shard(num_shards=self.shard[1], index=self.shard[0])
        return dataset

    def expand(self) -> list[HFDataset]:
        """The sources to read: this one, or one per shard of a streaming dataset."""
        dataset = self._load()
        if not self.streaming:
            return [replace(self, fingerprint=getattr(dataset, "_fingerprint", None))]
        return [replace(self, shard=(i, dataset.num_shards)) for i in range(dataset.num_shards)]

    def identity(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "cache_dir"}

    def count(self) -> int | None:
        return None if self.streaming else len(self._load())

    def documents(self, start: Position) -> Iterator[str]:
        dataset = self._load()
        if self.streaming:
            rows = dataset.skip(start.document)
        else:
            rows = dataset.select_columns([self.json_key]).select(range(start.document, len(dataset)))
        for row_number, row in enumerate(rows, start=start.document):
            if self.json_key not in row:
                raise InputError(f"data_preparation.hf_dataset.path={self.path}: row {row_number} has no "
                                 f"'{self.json_key}' field; set data_preparation.json_key")
            yield _text(row[self.json_key], f"{self.path}: row {row_number}: '{self.json_key}'")


@dataclass(frozen=True)
class EmbeddedCorpus(Source):
    """The corpus shipped with the package (nemo_llm.data.corpus), for demos and tests."""

    def identity(self) -> dict:
        return {"embedded": "pydoc_data.topics"}

    def documents(self, start: Position) -> Iterator[str]:
        for k, document in enumerate(embedded_documents()):
            if k >= start.document:
                yield document


def resolve_inputs(inputs: str | Sequence[str] | None) -> list[Path]:
    """Paths, globs, directories or a list of them -> sorted existing files."""
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


def file_source(path: Path, json_key: str = "text") -> Source:
    """The reader a file's name asks for: .jsonl/.json (one document per line), .parquet (one per
    row), anything else one document per file; each optionally compressed (.gz, .zst)."""
    suffix = path.with_suffix("").suffix if path.suffix in COMPRESSED else path.suffix
    if suffix in JSONL_SUFFIXES:
        return JsonlFile(path, json_key)
    if suffix == ".parquet":
        return ParquetFile(path, json_key)
    return TextFile(path)


def build_sources(inputs: str | Sequence[str] | None = None, json_key: str = "text",
                  hf_dataset: dict | None = None) -> list[Source]:
    """The sources of data_preparation: input files, then an HF dataset, or else the embedded corpus."""
    sources: list[Source] = [file_source(path, json_key) for path in resolve_inputs(inputs)]
    if hf_dataset and hf_dataset.get("path"):
        sources.extend(HFDataset(json_key=json_key, **hf_dataset).expand())
    return sources or [EmbeddedCorpus()]


def read_documents(sources: Sequence[Source], start: Position = Position(0), count: int | None = None) -> Iterator[str]:
    """`count` documents (None: all) of the sources read as one stream, from `start` on."""
    remaining = count
    for index in range(start.source, len(sources)):
        if remaining == 0:
            return
        position = start if index == start.source else Position(index)
        for document in sources[index].documents(position):
            yield document
            if remaining is not None:
                remaining -= 1
                if remaining == 0:
                    return

"""Megatron-LM's memory-mapped indexed dataset: <prefix>.bin holds the tokens of every sequence
back to back; <prefix>.idx says where each sequence starts and which sequences begin documents.

.idx layout (little-endian), as Megatron's MMapIndexedDataset writes it:
    9 bytes  magic b"MMIDIDX\\x00\\x00"
    uint64   version (1)
    uint8    dtype code (see DTYPE_CODES)
    uint64   sequence count N
    uint64   document index length D
    int32[N] sequence lengths in tokens
    int64[N] byte offsets of the sequences in .bin
    int64[D] document index: the first sequence of each document, then N
"""

from __future__ import annotations

import os
import shutil
import struct
from array import array
from pathlib import Path

import numpy as np

from nemo_llm.errors import NemoLLMError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
    6: np.float64, 7: np.float32, 8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
HEADER_BYTES = len(MAGIC) + 8 + 1 + 8 + 8


def token_dtype(vocab_size: int) -> type:
    """The smallest dtype Megatron would choose for token ids below vocab_size."""
    return np.uint16 if vocab_size < 65500 else np.int32


class IndexedDatasetError(NemoLLMError, ValueError):
    """A .bin/.idx pair that is missing, truncated or inconsistent."""


class IndexedDatasetWriter:
    """Appends documents (or whole datasets), then finalize() writes the .idx. Both files are
    written under temporary names and renamed at the end, .idx last, so a pair that looks complete
    is complete. Per-sequence bookkeeping lives in typed arrays: 12 bytes a document, not a Python
    int each, so merging hundreds of millions of documents stays within memory."""

    def __init__(self, prefix: str | Path, dtype: type = np.uint16):
        self.prefix = Path(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self._bin_tmp = Path(f"{self.prefix}.bin.tmp")
        self._bin = open(self._bin_tmp, "wb")
        self._sizes = array("i")
        self._doc_idx = array("q", [0])

    def add_document(self, tokens: list[int] | np.ndarray) -> None:
        """One document as one sequence (Megatron's layout when sentences are not split)."""
        tokens = np.asarray(tokens, dtype=self.dtype)
        self._bin.write(tokens.tobytes(order="C"))
        self._sizes.append(len(tokens))
        self._doc_idx.append(len(self._sizes))

    def add_dataset(self, prefix: str | Path) -> None:
        """Append every sequence and document of another .bin/.idx of the same dtype, as Megatron's
        merge does: its tokens are copied byte for byte."""
        other = IndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise IndexedDatasetError(f"{prefix}.idx holds {other.dtype} tokens, the merged dataset {self.dtype}")
        first = len(self._sizes)
        self._sizes.frombytes(other.sizes.tobytes())
        self._doc_idx.frombytes((other.doc_idx[1:] + first).astype(np.int64).tobytes())
        with open(f"{prefix}.bin", "rb") as f:
            shutil.copyfileobj(f, self._bin, 16 << 20)

    def abort(self) -> None:
        """Drop what was written: nothing is left under the final names."""
        self._bin.close()
        self._bin_tmp.unlink(missing_ok=True)

    def finalize(self) -> None:
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        sizes = np.frombuffer(self._sizes, dtype=np.int32) if len(self._sizes) else np.zeros(0, np.int32)
        pointers = np.zeros(len(sizes), dtype=np.int64)
        if len(sizes) > 1:
            np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        idx_tmp = Path(f"{self.prefix}.idx.tmp")
        with open(idx_tmp, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", VERSION))
            f.write(struct.pack("<B", CODE_OF_DTYPE[self.dtype]))
            f.write(struct.pack("<Q", len(sizes)))
            f.write(struct.pack("<Q", len(self._doc_idx)))
            f.write(sizes.tobytes(order="C"))
            f.write(pointers.tobytes(order="C"))
            f.write(self._doc_idx.tobytes())
            f.flush()
            os.fsync(f.fileno())
        self._bin_tmp.replace(f"{self.prefix}.bin")
        idx_tmp.replace(f"{self.prefix}.idx")


def merge_indexed_datasets(prefixes: list[str | Path], output_prefix: str | Path) -> None:
    """One .bin/.idx holding the given datasets' documents in order (all of one dtype)."""
    if not prefixes:
        raise IndexedDatasetError("nothing to merge: no input datasets")
    writer = IndexedDatasetWriter(output_prefix, dtype=IndexedDataset(prefixes[0]).dtype)
    try:
        for prefix in prefixes:
            writer.add_dataset(prefix)
    except BaseException:
        writer.abort()
        raise
    writer.finalize()


class IndexedDataset:
    """Read-only view of a .bin/.idx pair through numpy memmaps; dataset[i] is sequence i.

    Opening checks the header and that .bin holds exactly the bytes .idx describes, so a truncated
    or foreign file is refused with its name instead of read as garbage.
    """

    def __init__(self, prefix: str | Path):
        self.prefix = str(prefix)
        idx_path, bin_path = f"{self.prefix}.idx", f"{self.prefix}.bin"
        for path in (idx_path, bin_path):
            if not os.path.isfile(path):
                raise IndexedDatasetError(f"{path} not found: run the data_preparation stage or fix model.data.data_prefix")
        idx_size = os.path.getsize(idx_path)
        with open(idx_path, "rb") as f:
            header = f.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES or header[: len(MAGIC)] != MAGIC:
            raise IndexedDatasetError(f"{idx_path} is not a Megatron indexed dataset index (bad magic or header)")
        version, code, count, doc_count = struct.unpack("<QBQQ", header[len(MAGIC):])
        if version != VERSION or code not in DTYPE_CODES:
            raise IndexedDatasetError(f"{idx_path}: unsupported version {version} or dtype code {code}")
        expected = HEADER_BYTES + count * 4 + count * 8 + doc_count * 8
        if idx_size != expected:
            raise IndexedDatasetError(f"{idx_path} is truncated or corrupt: {idx_size} bytes, header implies {expected}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        index = np.memmap(idx_path, mode="r", dtype=np.uint8)
        offset = HEADER_BYTES
        self.sizes = np.frombuffer(index, dtype=np.int32, count=count, offset=offset)
        offset += count * 4
        self.pointers = np.frombuffer(index, dtype=np.int64, count=count, offset=offset)
        offset += count * 8
        self.doc_idx = np.frombuffer(index, dtype=np.int64, count=doc_count, offset=offset)
        bin_size = os.path.getsize(bin_path)
        data_bytes = int(self.pointers[-1] + self.sizes[-1] * self.dtype.itemsize) if count else 0
        if bin_size != data_bytes:
            raise IndexedDatasetError(f"{bin_path} is truncated or corrupt: {bin_size} bytes, {idx_path} describes {data_bytes}")
        # A plain ndarray over the map: slicing an np.memmap costs several times more per sample.
        self.tokens = (np.memmap(bin_path, mode="r", dtype=self.dtype).view(np.ndarray) if bin_size
                       else np.zeros(0, self.dtype))

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset+length) of sequence i (a view into the memmap)."""
        start = int(self.pointers[i]) // self.dtype.itemsize + offset
        end = start + (int(self.sizes[i]) - offset if length is None else length)
        return self.tokens[start:end]

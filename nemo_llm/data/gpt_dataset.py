"""GPT training samples over an indexed dataset, as Megatron builds them.

Documents of a split are concatenated (with their EOD tokens) in a seeded random order, epoch
after epoch as needed; sample i is tokens [i*s, i*s + s + 1) of that stream, so samples cross
document boundaries and consecutive samples share one token (the last label of one is the first
input of the next). A seeded shuffle over samples decides the order they are read in.

Three index arrays describe this, with Megatron's names and meaning, and are cached as .npy files
(built once by global rank 0 while the other ranks wait, then memory-mapped by every rank):
    doc_idx     [documents x epochs]   the document order of the stream
    sample_idx  [num_samples + 1, 2]   (position in doc_idx, token offset) where each sample
                                       starts; sample i ends at sample_idx[i + 1], that token included
    shuffle_idx [num_samples]          the sample read at each position of the dataset
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from nemo_llm.data.blending import BlendedDataset, parse_data_prefix, samples_needed
from nemo_llm.data.indexed_dataset import IndexedDataset
from nemo_llm.errors import NemoLLMError

SPLIT_NAMES = ("train", "validation", "test")
INDEX_NAMES = ("doc_idx", "sample_idx", "shuffle_idx")


class DatasetTooSmallError(NemoLLMError, ValueError):
    """A split holds fewer tokens than one sample."""


class IndexCacheError(NemoLLMError, OSError):
    """The sample-index cache directory cannot be written."""


def split_documents(num_documents: int, fractions: list[float]) -> dict[str, np.ndarray]:
    """Contiguous document ranges per split, from fractions summing to 1 (Megatron's rule)."""
    bounds = [0]
    for fraction in fractions:
        bounds.append(bounds[-1] + int(round(fraction * num_documents)))
    diff = bounds[-1] - num_documents
    bounds = [b - diff if i > 0 else b for i, b in enumerate(bounds)]
    bounds = [min(max(b, 0), num_documents) for b in bounds]
    return {name: np.arange(bounds[i], bounds[i + 1]) for i, name in enumerate(SPLIT_NAMES)}


def build_indices(sizes: np.ndarray, documents: np.ndarray, seq_length: int, num_samples: int,
                  seed: int) -> dict[str, np.ndarray]:
    """doc_idx, sample_idx and shuffle_idx (see the module docstring) for `num_samples` samples."""
    tokens_per_epoch = int(sizes[documents].astype(np.int64).sum())
    num_epochs = -(-(num_samples * seq_length + 1) // tokens_per_epoch)
    rng = np.random.RandomState(seed)
    doc_dtype = np.int32 if len(sizes) < 2**31 else np.int64
    doc_idx = np.concatenate([rng.permutation(documents) for _ in range(num_epochs)]).astype(doc_dtype)
    doc_starts = np.concatenate([[0], np.cumsum(sizes[doc_idx], dtype=np.int64)])
    starts = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    # side="right" lands on the last document starting at or before the position, which is never
    # an empty one, so samples skip empty documents exactly as the token stream does.
    position = np.searchsorted(doc_starts, starts, side="right") - 1
    sample_idx = np.stack([position, starts - doc_starts[position]], axis=1)
    shuffle_idx = rng.permutation(num_samples)
    return {"doc_idx": doc_idx, "sample_idx": sample_idx, "shuffle_idx": shuffle_idx}


def cached_indices(cache_prefix: Path, build) -> dict[str, np.ndarray]:
    """The index arrays saved under cache_prefix, built by build() first when absent.

    With torch.distributed initialised, global rank 0 builds and saves while the other ranks wait
    at a barrier, so N ranks neither repeat the work nor race on the files. Each file is written
    under a temporary name and renamed, so a cache that exists is complete.
    """
    paths = {name: Path(f"{cache_prefix}_{name}.npy") for name in INDEX_NAMES}
    distributed = dist.is_available() and dist.is_initialized()
    if (not distributed or dist.get_rank() == 0) and not all(p.is_file() for p in paths.values()):
        arrays = build()
        try:
            cache_prefix.parent.mkdir(parents=True, exist_ok=True)
            for name, path in paths.items():
                tmp = path.with_name(path.name + f".tmp{os.getpid()}")
                with open(tmp, "wb") as f:
                    np.save(f, arrays[name])
                tmp.replace(path)
        except OSError as e:
            raise IndexCacheError(f"cannot write the sample-index cache in {cache_prefix.parent} ({e.strerror}): "
                                  "set model.data.index_mapping_dir to a writable directory") from None
    if distributed:
        dist.barrier()
    # Plain ndarray views over the maps: indexing an np.memmap costs several times more per sample.
    return {name: np.load(path, mmap_mode="r").view(np.ndarray) for name, path in paths.items()}


class GPTDataset(Dataset):
    """dataset[i] -> {"tokens": [s], "labels": [s]} int64 arrays (labels: tokens shifted by one);
    collate_samples batches them into tensors.

    num_samples None means one pass over the split. index_dir None keeps the indices in memory
    only; otherwise they are cached there, named after the dataset, split and everything that
    decides their content.
    """

    def __init__(
        self,
        indexed: IndexedDataset,
        documents: np.ndarray,
        seq_length: int,
        num_samples: int | None,
        seed: int,
        name: str = "train",
        index_dir: str | Path | None = None,
    ):
        self.indexed = indexed
        self.seq_length = seq_length
        self.name = name
        tokens_per_epoch = int(indexed.sizes[documents].astype(np.int64).sum())
        if tokens_per_epoch < seq_length + 1:
            raise DatasetTooSmallError(
                f"{name} split of {indexed.prefix} has {tokens_per_epoch} tokens, fewer than one sample of "
                f"model.encoder_seq_length+1={seq_length + 1}: add data or change model.data.splits_string"
            )
        if num_samples is None:
            num_samples = (tokens_per_epoch - 1) // seq_length

        def build() -> dict[str, np.ndarray]:
            return build_indices(indexed.sizes, documents, seq_length, num_samples, seed)

        if index_dir is None:
            indices = build()
        else:
            indices = cached_indices(self._cache_prefix(Path(index_dir), documents, num_samples, seed), build)
        self.doc_idx, self.sample_idx, self.shuffle_idx = (indices[n] for n in INDEX_NAMES)

    def _cache_prefix(self, index_dir: Path, documents: np.ndarray, num_samples: int, seed: int) -> Path:
        # The hash ties the cache to this exact .idx file (size and modification time) and split,
        # so rewriting the data or changing the split never reuses stale indices.
        stat = os.stat(f"{self.indexed.prefix}.idx")
        identity = {"idx": os.path.abspath(f"{self.indexed.prefix}.idx"), "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns, "documents": hashlib.sha1(np.ascontiguousarray(documents)).hexdigest()}
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        stem = Path(self.indexed.prefix).name
        return index_dir / f"{stem}_{self.name}_indexmap_{num_samples}ns_{self.seq_length}sl_{seed}s_{digest}"

    def __len__(self) -> int:
        return len(self.shuffle_idx)

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        # The hot path of data loading: Python ints and slices of the token map, one int64 copy,
        # and no tensor per sample (collate_samples makes one per batch; Megatron returns numpy too).
        i = int(self.shuffle_idx[idx])
        (first, offset), (last, end_offset) = self.sample_idx[i:i + 2].tolist()
        indexed = self.indexed
        tokens, pointers, itemsize = indexed.tokens, indexed.pointers, indexed.dtype.itemsize
        pieces = []
        for position in range(first, last + 1):
            document = int(self.doc_idx[position])
            start = int(pointers[document]) // itemsize
            begin = start + offset if position == first else start
            end = start + end_offset + 1 if position == last else start + int(indexed.sizes[document])
            pieces.append(tokens[begin:end])
        sample = np.concatenate(pieces, dtype=np.int64)
        return {"tokens": sample[:-1], "labels": sample[1:]}


def collate_samples(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """A batch of samples -> {"tokens": [b, s], "labels": [b, s]} int64 tensors."""
    return {key: torch.from_numpy(np.stack([sample[key] for sample in samples])) for key in samples[0]}


def available_splits(data_prefix, split_fractions: list[float], splits: tuple[str, ...] = SPLIT_NAMES) -> tuple[str, ...]:
    """The requested splits that exist: train always (an empty one fails loudly when built), a
    held-out split only when every corpus of the blend has documents for it."""
    counts = [len(IndexedDataset(prefix)) for _, prefix in parse_data_prefix(data_prefix)]
    return tuple(name for name in splits
                 if name == "train" or all(len(split_documents(n, split_fractions)[name]) for n in counts))


def _split_datasets(prefix: str, split_fractions: list[float], seq_length: int, seed: int, train_samples: int | None,
                    splits: tuple[str, ...], index_mapping_dir: str | None) -> dict[str, GPTDataset]:
    indexed = IndexedDataset(prefix)
    documents = split_documents(len(indexed), split_fractions)
    index_dir = index_mapping_dir or Path(prefix).parent
    return {name: GPTDataset(indexed, documents[name], seq_length, train_samples if name == "train" else None, seed,
                             name, index_dir)
            for name in splits}


def build_gpt_datasets(data_prefix, split_fractions: list[float], seq_length: int, seed: int,
                       train_samples: int | None = None, splits: tuple[str, ...] = SPLIT_NAMES,
                       index_mapping_dir: str | None = None) -> dict[str, Dataset]:
    """A dataset per requested split in available_splits(). Train gets train_samples samples (more
    than one epoch when needed); validation and test one pass each. data_prefix is one prefix or a
    blend [w1, prefix1, w2, prefix2, ...] (see nemo_llm.data.blending). Sample indices are cached
    in index_mapping_dir (None: next to each corpus's files)."""
    splits = available_splits(data_prefix, split_fractions, splits)
    blend = parse_data_prefix(data_prefix)
    if len(blend) == 1:
        return _split_datasets(blend[0][1], split_fractions, seq_length, seed, train_samples, splits, index_mapping_dir)
    weights = [w for w, _ in blend]
    per_dataset_train = (samples_needed(weights, train_samples) if train_samples is not None
                         else [None] * len(blend))
    parts = [_split_datasets(prefix, split_fractions, seq_length, seed, n, splits, index_mapping_dir)
             for (_, prefix), n in zip(blend, per_dataset_train)]
    result: dict[str, Dataset] = {}
    for name in splits:
        members = [p[name] for p in parts]
        if name == "train" and train_samples is not None:
            size = train_samples
        else:  # as many samples as the blend can take without repeating any corpus
            size = min(int(len(ds) / w) for ds, w in zip(members, weights))
        result[name] = BlendedDataset(members, weights, size)
    return result


class PretrainingBatchSampler:
    """Yields this data-parallel rank's share of each global batch, starting after `consumed_samples`.

    Which samples make up global batch k depends only on k and the global batch size, never on the
    data-parallel size, so a run resumed at another layout reads the same samples next.
    """

    def __init__(self, total_samples: int, consumed_samples: int, global_batch_size: int,
                 data_parallel_rank: int = 0, data_parallel_size: int = 1):
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.global_batch_size = global_batch_size
        self.share = global_batch_size // data_parallel_size
        self.rank_offset = data_parallel_rank * self.share

    def __len__(self) -> int:
        # The whole epoch, consumed batches included, as Megatron counts it: a trainer restored at
        # step k has k batches of the epoch done and must see the epoch end after the remaining ones.
        return self.total_samples // self.global_batch_size

    def __iter__(self):
        first_batch = -(-self.consumed_samples // self.global_batch_size)
        for batch in range(len(self) - first_batch):
            first = self.consumed_samples + batch * self.global_batch_size + self.rank_offset
            yield list(range(first, first + self.share))

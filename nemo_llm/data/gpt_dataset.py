"""GPT training samples over an indexed dataset, as Megatron builds them.

Documents of a split are concatenated (with their EOD tokens) in a seeded random order, epoch
after epoch as needed; sample i is tokens [i*s, i*s + s + 1) of that stream, so samples cross
document boundaries and consecutive samples share one token (the last label of one is the first
input of the next). A seeded shuffle over samples decides the order they are read in.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from nemo_llm.data.blending import BlendedDataset, parse_data_prefix, samples_needed
from nemo_llm.data.indexed_dataset import IndexedDataset
from nemo_llm.errors import NemoLLMError

SPLIT_NAMES = ("train", "validation", "test")


class DatasetTooSmallError(NemoLLMError, ValueError):
    """A split holds fewer tokens than one sample."""


def split_documents(num_documents: int, fractions: list[float]) -> dict[str, np.ndarray]:
    """Contiguous document ranges per split, from fractions summing to 1 (Megatron's rule)."""
    bounds = [0]
    for fraction in fractions:
        bounds.append(bounds[-1] + int(round(fraction * num_documents)))
    diff = bounds[-1] - num_documents
    bounds = [b - diff if i > 0 else b for i, b in enumerate(bounds)]
    bounds = [min(max(b, 0), num_documents) for b in bounds]
    return {name: np.arange(bounds[i], bounds[i + 1]) for i, name in enumerate(SPLIT_NAMES)}


class GPTDataset(Dataset):
    """dataset[i] -> {"tokens": [s] int64, "labels": [s] int64} (labels: tokens shifted by one)."""

    def __init__(
        self,
        indexed: IndexedDataset,
        documents: np.ndarray,
        seq_length: int,
        num_samples: int | None,
        seed: int,
        name: str = "train",
    ):
        self.indexed = indexed
        self.seq_length = seq_length
        self.name = name
        sizes = indexed.sizes[documents].astype(np.int64)
        tokens_per_epoch = int(sizes.sum())
        if tokens_per_epoch < seq_length + 1:
            raise DatasetTooSmallError(
                f"{name} split of {indexed.prefix} has {tokens_per_epoch} tokens, fewer than one sample of "
                f"model.encoder_seq_length+1={seq_length + 1}: add data or change model.data.splits_string"
            )
        if num_samples is None:  # one pass over the split
            num_samples = (tokens_per_epoch - 1) // seq_length
        num_epochs = -(-(num_samples * seq_length + 1) // tokens_per_epoch)
        rng = np.random.RandomState(seed)
        self.doc_order = np.concatenate([rng.permutation(documents) for _ in range(num_epochs)])
        self.doc_starts = np.concatenate([[0], np.cumsum(indexed.sizes[self.doc_order].astype(np.int64))])
        self.shuffle_idx = rng.permutation(num_samples)

    def __len__(self) -> int:
        return len(self.shuffle_idx)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        start = int(self.shuffle_idx[idx]) * self.seq_length
        end = start + self.seq_length + 1
        first = int(np.searchsorted(self.doc_starts, start, side="right")) - 1
        pieces, position, i = [], start, first
        while position < end:
            offset = position - int(self.doc_starts[i])
            length = min(int(self.doc_starts[i + 1]) - position, end - position)
            if length > 0:
                pieces.append(self.indexed.get(int(self.doc_order[i]), offset, length))
            position += max(length, 0)
            i += 1
        sample = torch.from_numpy(np.concatenate(pieces).astype(np.int64))
        return {"tokens": sample[:-1], "labels": sample[1:]}


def _split_datasets(prefix: str, split_fractions: list[float], seq_length: int, seed: int,
                    train_samples: int | None, splits: tuple[str, ...]) -> dict[str, GPTDataset]:
    indexed = IndexedDataset(prefix)
    documents = split_documents(len(indexed), split_fractions)
    return {
        name: GPTDataset(indexed, documents[name], seq_length, train_samples if name == "train" else None, seed, name)
        for name in splits
        if name == "train" or len(documents[name])  # an empty train split fails loudly in GPTDataset
    }


def build_gpt_datasets(data_prefix, split_fractions: list[float], seq_length: int, seed: int,
                       train_samples: int | None = None, splits: tuple[str, ...] = SPLIT_NAMES) -> dict[str, Dataset]:
    """A dataset per requested split that has documents. Train gets train_samples samples (more
    than one epoch when needed); validation and test one pass each. data_prefix is one prefix or a
    blend [w1, prefix1, w2, prefix2, ...] (see nemo_llm.data.blending)."""
    blend = parse_data_prefix(data_prefix)
    if len(blend) == 1:
        return _split_datasets(blend[0][1], split_fractions, seq_length, seed, train_samples, splits)
    weights = [w for w, _ in blend]
    per_dataset_train = (samples_needed(weights, train_samples) if train_samples is not None
                         else [None] * len(blend))
    parts = [_split_datasets(prefix, split_fractions, seq_length, seed, n, splits)
             for (_, prefix), n in zip(blend, per_dataset_train)]
    result: dict[str, Dataset] = {}
    for name in splits:
        if not all(name in p for p in parts):
            continue  # a held-out split that some corpus lacks is left out of the blend
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
        return max(self.total_samples - self.consumed_samples, 0) // self.global_batch_size

    def __iter__(self):
        for batch in range(len(self)):
            first = self.consumed_samples + batch * self.global_batch_size + self.rank_offset
            yield list(range(first, first + self.share))

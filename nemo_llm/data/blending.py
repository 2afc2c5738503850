"""Blended datasets: model.data.data_prefix = [w1, prefix1, w2, prefix2, ...] draws samples from
several corpora in fixed proportions, as Megatron's BlendedDataset does.

Sample k of dataset d is placed at "time" (k + 0.5) / w_d and all samples are merged in time
order, so every prefix of the blend holds each dataset's share to within one sample, the order
is deterministic and nothing needs a sequential loop over millions of samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from nemo_llm.errors import NemoLLMError


class DataPrefixError(NemoLLMError, ValueError):
    """model.data.data_prefix is neither a prefix nor a [weight, prefix, ...] list."""


def parse_data_prefix(data_prefix) -> list[tuple[float, str]]:
    """'path' or [w1, 'path1', w2, 'path2', ...] -> [(weight, path)] with weights summing to 1."""
    if isinstance(data_prefix, str):
        return [(1.0, data_prefix)]
    items = list(data_prefix or [])
    try:
        pairs = [(float(items[i]), str(items[i + 1])) for i in range(0, len(items), 2)]
    except (ValueError, TypeError, IndexError):
        pairs = []
    if not pairs or len(items) % 2 or any(w <= 0 for w, _ in pairs):
        raise DataPrefixError(f"model.data.data_prefix={items} must be a path prefix or a list "
                              "[weight1, prefix1, weight2, prefix2, ...] with positive weights")
    total = sum(w for w, _ in pairs)
    return [(w / total, p) for w, p in pairs]


def blend_order(weights: Sequence[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset index, sample index within that dataset) for each of `size` blended samples."""
    counts = [math.ceil(w * size) + 1 for w in weights]
    times = np.concatenate([(np.arange(n) + 0.5) / w for n, w in zip(counts, weights)])
    owners = np.concatenate([np.full(n, d, dtype=np.int32) for d, n in enumerate(counts)])
    within = np.concatenate([np.arange(n, dtype=np.int64) for n in counts])
    order = np.argsort(times, kind="stable")[:size]
    return owners[order], within[order]


def samples_needed(weights: Sequence[float], size: int) -> list[int]:
    """How many samples each dataset must provide for a blend of `size`."""
    owners, within = blend_order(weights, size)
    return [int(within[owners == d].max()) + 1 if np.any(owners == d) else 0 for d in range(len(weights))]


class BlendedDataset(Dataset):
    def __init__(self, datasets: Sequence[Dataset], weights: Sequence[float], size: int):
        self.datasets = list(datasets)
        self.weights = list(weights)
        self.dataset_index, self.sample_index = blend_order(self.weights, size)
        for d, dataset in enumerate(self.datasets):
            used = self.sample_index[self.dataset_index == d]
            if len(used) and used.max() >= len(dataset):
                raise ValueError(f"blend needs {used.max() + 1} samples of dataset {d}, which has {len(dataset)}")

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, idx: int):
        return self.datasets[int(self.dataset_index[idx])][int(self.sample_index[idx])]

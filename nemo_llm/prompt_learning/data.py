"""Prompt-learning data: jsonl records with a "taskname" field, tokenised through their task's
template into fixed-length (tokens, labels) samples, in global batches over data-parallel ranks.

Every batch has the same shape ([micro batch, max_seq_length]): pipeline stages agree on activation
shapes once. Right padding is harmless under causal attention and takes no loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from nemo_llm.data.gpt_dataset import PretrainingBatchSampler
from nemo_llm.data.jsonl import jsonl_records
from nemo_llm.models.gpt import IGNORE_INDEX
from nemo_llm.prompt_learning.templates import PromptTokenizer, TemplateError, example_labels


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [record for _, record in jsonl_records(path, TemplateError)]


class PromptDataset(Dataset):
    """Examples of the given tasks (records of other tasks are left out); each is (tokens, labels)
    padded to seq_length. Records too long even after truncation are dropped and counted."""

    def __init__(self, records: Sequence[Mapping[str, Any]], tokenizer: PromptTokenizer, tasks: Sequence[str],
                 seq_length: int):
        self.examples: list[tuple[list[int], list[int]]] = []
        self.dropped = 0
        virtual = tokenizer.virtual
        for record in records:
            name = record.get("taskname")
            if name not in tasks:
                continue
            encoded = tokenizer.encode_example(name, record, seq_length + 1)
            if encoded is None:
                self.dropped += 1
                continue
            ids, answer_start = encoded
            self.examples.append(example_labels(ids, answer_start, virtual.first_id,
                                                virtual.tasks[name].answer_only_loss))
        self.seq_length = seq_length
        self.pad_id = tokenizer.eod_id

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        tokens, labels = self.examples[index]
        pad = self.seq_length - len(tokens)
        return {"tokens": np.array(tokens + [self.pad_id] * pad, dtype=np.int64),
                "labels": np.array(labels + [IGNORE_INDEX] * pad, dtype=np.int64)}


class EpochShuffled(Dataset):
    """`length` samples cycling through a dataset, reshuffled each epoch (seeded: the same order on
    every rank and after a resume)."""

    def __init__(self, dataset: Dataset, length: int, seed: int):
        self.dataset, self.length, self.seed = dataset, length, seed
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        epoch, position = divmod(index, len(self.dataset))
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        return self.dataset[int(self._orders[epoch][position])]


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Samples -> {"tokens": [b, s], "labels": [b, s]} int64."""
    return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}


class PromptDataModule(pl.LightningDataModule):
    """This data-parallel rank's share of each global batch (tensor and pipeline peers read the same)."""

    def __init__(self, train: PromptDataset, validation: PromptDataset | None, global_batch_size: int,
                 max_steps: int, seed: int):
        super().__init__()
        if len(train) == 0:
            raise TemplateError("prompt_learning.data.train_ds holds no usable record of the tasks being trained")
        self.train = EpochShuffled(train, max_steps * global_batch_size, seed)
        self.validation = validation if validation is not None and len(validation) >= global_batch_size else None
        self.global_batch_size = global_batch_size

    def _loader(self, dataset: Dataset, consumed_samples: int) -> DataLoader:
        state = self.trainer.strategy.parallel_state
        sampler = PretrainingBatchSampler(len(dataset), consumed_samples, self.global_batch_size, state.dp_rank,
                                          state.data_parallel_size)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, self.trainer.lightning_module.consumed_samples)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.validation, 0) if self.validation is not None else []

"""Train and validation dataloaders over a prepared indexed dataset."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from nemo_llm.data.gpt_dataset import PretrainingBatchSampler, available_splits, build_gpt_datasets, collate_samples

FIT_SPLITS = ("train", "validation")


class GPTDataModule(pl.LightningDataModule):
    """Every batch is this data-parallel rank's share of a global batch (tensor and pipeline peers
    read the same share). Train batches, as many as trainer.max_steps needs, start after the
    module's consumed_samples; validation goes once over its split in global batches.

    The datasets are built in setup(), which Lightning calls once the process group exists, so
    rank 0 builds the cached sample indices while the other ranks wait for them.
    """

    def __init__(self, data_prefix, split_fractions: list[float], seq_length: int, global_batch_size: int,
                 max_steps: int, seed: int, num_workers: int = 0, index_mapping_dir: str | None = None):
        super().__init__()
        self.data_prefix = data_prefix
        self.split_fractions = split_fractions
        self.seq_length = seq_length
        self.global_batch_size = global_batch_size
        self.max_steps = max_steps
        self.seed = seed
        self.num_workers = num_workers
        self.index_mapping_dir = index_mapping_dir
        self.datasets: dict[str, Dataset] = {}

    @property
    def has_validation(self) -> bool:
        """Whether the validation split has documents; known before the datasets are built."""
        return "validation" in available_splits(self.data_prefix, self.split_fractions, FIT_SPLITS)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.datasets = build_gpt_datasets(self.data_prefix, self.split_fractions, self.seq_length, self.seed,
                                           train_samples=self.max_steps * self.global_batch_size,
                                           splits=FIT_SPLITS, index_mapping_dir=self.index_mapping_dir)

    def _loader(self, split: str, consumed_samples: int) -> DataLoader:
        state = self.trainer.strategy.parallel_state
        sampler = PretrainingBatchSampler(len(self.datasets[split]), consumed_samples, self.global_batch_size,
                                          state.dp_rank, state.data_parallel_size)
        return DataLoader(self.datasets[split], batch_sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_samples, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.trainer.lightning_module.consumed_samples)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("validation", 0) if "validation" in self.datasets else []

"""Train and validation dataloaders over a prepared indexed dataset."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from nemo_llm.data.gpt_dataset import GPTDataset, PretrainingBatchSampler, build_gpt_datasets


class GPTDataModule(pl.LightningDataModule):
    """Train batches are whole global batches (this rank's share), as many as trainer.max_steps
    needs, starting after the module's consumed_samples; validation is one pass in micro batches."""

    def __init__(self, data_prefix: str, split_fractions: list[float], seq_length: int, micro_batch_size: int,
                 global_batch_size: int, max_steps: int, seed: int, num_workers: int = 0):
        super().__init__()
        self.data_prefix = data_prefix
        self.split_fractions = split_fractions
        self.seq_length = seq_length
        self.micro_batch_size = micro_batch_size
        self.global_batch_size = global_batch_size
        self.max_steps = max_steps
        self.seed = seed
        self.num_workers = num_workers
        self.datasets: dict[str, GPTDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.datasets = build_gpt_datasets(self.data_prefix, self.split_fractions, self.seq_length, self.seed,
                                           train_samples=self.max_steps * self.global_batch_size,
                                           splits=("train", "validation"))

    def train_dataloader(self) -> DataLoader:
        consumed = self.trainer.lightning_module.consumed_samples if self.trainer else 0
        sampler = PretrainingBatchSampler(len(self.datasets["train"]), consumed, self.global_batch_size)
        return DataLoader(self.datasets["train"], batch_sampler=sampler, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | list:
        if "validation" not in self.datasets:
            return []
        return DataLoader(self.datasets["validation"], batch_size=self.micro_batch_size, drop_last=True,
                          num_workers=self.num_workers)

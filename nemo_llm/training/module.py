"""The LightningModule of GPT pretraining. One training_step is one optimizer step over one
global batch: the microbatch loop, gradient clipping and the optimizer step are written out in
order, as in Megatron's train_step, which is why optimization is manual."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from nemo_llm.models.gpt import GPTConfig, GPTModel, gpt_loss
from nemo_llm.parallel import apply_recompute
from nemo_llm.training.optim import build_optimizer, build_scheduler, clip_grad_norm


class GPTPretrainModule(pl.LightningModule):
    def __init__(self, gpt_config: Mapping[str, Any], optim: Mapping[str, Any], micro_batch_size: int,
                 global_batch_size: int, max_steps: int, gradient_clip_val: float,
                 recompute: Mapping[str, Any] | None = None):
        super().__init__()
        # Plain dicts only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = GPTModel(GPTConfig(**gpt_config))
        # granularity / method / num_layers, as model.activations_checkpoint_* in the config
        apply_recompute(self.model, **(recompute or {"granularity": None}))
        self.consumed_samples = 0
        self.step_metrics: dict[str, torch.Tensor] = {}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.hparams.optim)
        scheduler = build_scheduler(optimizer, self.hparams.optim, self.hparams.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        micro = self.hparams.micro_batch_size
        num_micro = batch["tokens"].shape[0] // micro
        loss_sum = torch.zeros((), device=self.device)
        for i in range(num_micro):
            part = {k: v[i * micro:(i + 1) * micro] for k, v in batch.items()}
            loss = gpt_loss(self.model(part["tokens"]), part["labels"])
            self.manual_backward(loss / num_micro)
            loss_sum += loss.detach()
        grad_norm = clip_grad_norm(self.model.parameters(), self.hparams.gradient_clip_val)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        self.consumed_samples += self.hparams.global_batch_size

        loss = loss_sum / num_micro
        self.step_metrics = {"loss": loss, "lr": torch.tensor(lr), "grad_norm": grad_norm}
        self.log("loss", loss, prog_bar=True)
        self.log("lr", lr)
        self.log("grad_norm", grad_norm)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = gpt_loss(self.model(batch["tokens"]), batch["labels"])
        self.log("val_loss", loss, prog_bar=True, batch_size=batch["tokens"].shape[0])
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["consumed_samples"] = self.consumed_samples

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.consumed_samples = checkpoint.get("consumed_samples", 0)

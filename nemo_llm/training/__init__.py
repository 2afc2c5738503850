"""Pretraining: the LightningModule, its data, schedule, metrics and the Trainer around them."""

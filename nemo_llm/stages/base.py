"""A stage turns the config into work and writes its outputs into the run directory."""

from __future__ import annotations

from abc import ABC, abstractmethod

from omegaconf import DictConfig


class Stage(ABC):
    name: str
    # Whether the stage runs the model, so the plan's layout must fit this machine.
    runs_model: bool = False

    def check(self, cfg: DictConfig) -> None:
        """Raise ConfigError if this stage cannot run cfg; called for every stage before any runs."""

    @abstractmethod
    def run(self, cfg: DictConfig) -> dict:
        """Do the work; return a JSON-serialisable summary."""

"""Configuration: the typed schema, Hydra composition and validation.

`python main.py +model=gpt_530b` selects a preset from conf/model/. `model=gpt_530b` means the
same, and without either the CPU demo preset gpt_tiny is used: select_preset() makes all three
spellings one, for main.py and for compose() alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from nemo_llm.config.schema import Config
from nemo_llm.config.validation import ConfigError, validate

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DEFAULT_PRESET = "gpt_tiny"

ConfigStore.instance().store(name="nemo_llm_schema", node=Config)


def select_preset(overrides: Sequence[str]) -> list[str]:
    """Return the overrides with exactly one `+model=<preset>` in them.

    The model group is not in config.yaml's defaults list because Hydra refuses `+model=` for a
    group that already has a default; this puts the default back when the user names none.
    """
    result = []
    chosen = False
    for item in overrides:
        if item.startswith(("model=", "+model=", "++model=")):
            item = "+model=" + item.split("=", 1)[1]
            chosen = True
        result.append(item)
    return result if chosen else [f"+model={DEFAULT_PRESET}", *result]


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config main.py would run with these command-line overrides (for tests and scripts)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=select_preset(overrides))


__all__ = ["CONF_DIR", "Config", "ConfigError", "compose", "select_preset", "validate"]

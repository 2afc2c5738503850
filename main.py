"""nemo_llm's command line: `python main.py [+model=<preset>] [key=value ...]`.

Hydra composes conf/config.yaml, the model preset and the overrides; nemo_llm.pipeline validates
the result, prints the plan and runs the stages it lists. See README.md.
"""

import sys

import hydra
from omegaconf import DictConfig

from nemo_llm.config import select_preset
from nemo_llm.pipeline import run_pipeline


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sys.exit(run_pipeline(cfg))


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *select_preset(sys.argv[1:])]
    main()

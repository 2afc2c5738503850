"""One Slurm task = one rank: `srun python -m nemo_llm.launcher.slurm_task <job>.yaml` sets the
torch.distributed variables from SLURM_* and runs the job's stage (nemo_llm.launcher.slurm)."""

from __future__ import annotations

import os
import sys

from omegaconf import OmegaConf

# A file every preempted process creates (nemo_llm.pipeline): the first task to exit 75 makes srun stop the
# others, whose status may then hide the 75, so the job script looks for this file too.
PREEMPTED_FILE_ENV = "NEMO_LLM_PREEMPTED_FILE"
RANK_PER_TASK = "NEMO_LLM_RANK_PER_TASK"  # set: this process is one rank of the layout; launch nothing


def main(argv: list[str]) -> int:
    from nemo_llm.config import Config
    from nemo_llm.launcher.slurm import rank_environment
    from nemo_llm.pipeline import run_pipeline

    if len(argv) != 1:
        print("usage: python -m nemo_llm.launcher.slurm_task <job config.yaml>", file=sys.stderr)
        return 2
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(argv[0]))
    os.environ.update(rank_environment(dict(os.environ), cfg.cluster.master_port))
    os.environ[RANK_PER_TASK] = "1"
    # Like torchrun: the tasks of a node share its cores (Slurm's cpus-per-task when it sets them).
    import torch

    cores = int(os.environ.get("SLURM_CPUS_PER_TASK") or 0) or \
        max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"]))
    torch.set_num_threads(cores)
    return run_pipeline(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What main.py runs: validate, print the plan, check the machine, run the stages in order."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nemo_llm.config import ConfigError, validate
from nemo_llm.errors import NemoLLMError, Preempted
from nemo_llm.launcher.slurm_task import PREEMPTED_FILE_ENV, RANK_PER_TASK
from nemo_llm.plan import Machine, build_plan, check_resources
from nemo_llm.stages import STAGES

EXIT_OK, EXIT_UNFIT, EXIT_CONFIG = 0, 1, 2
EXIT_PREEMPTED = 75  # sysexits EX_TEMPFAIL: stopped on a signal after a checkpoint; requeue with resume=auto


def fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def run_pipeline(cfg: DictConfig, machine: Machine | None = None) -> int:
    """Run cfg.stages; returns the process exit code: 0 ok, 1 the machine cannot run the layout, 2 a bad
    config or bad input (data, checkpoint) found by a check or a stage, 75 preempted (a checkpoint
    was saved; run again with resume=auto). Nothing is written before every check has passed."""
    try:
        unknown = [name for name in cfg.stages if name not in STAGES]
        if unknown:
            raise ConfigError(f"stages: unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
        validate(cfg)
        plan = build_plan(cfg)
    except ConfigError as e:
        return fail(str(e), EXIT_CONFIG)
    # A Slurm task is one rank of the stage's layout (nemo_llm.launcher.slurm_task); rank 0 reports and writes.
    task = os.environ.get(RANK_PER_TASK) == "1"
    reporter = not task or os.environ.get("RANK", "0") == "0"
    if reporter:
        print(plan.render(), flush=True)
    submits = cfg.cluster.type != "local" and not task
    if cfg.dry_run and not submits:
        return EXIT_OK

    stages = [STAGES[name] for name in cfg.stages]
    if any(stage.runs_model for stage in stages) and not submits:
        reason = check_resources(plan, cfg, machine or Machine.detect())
        if reason:
            return fail(reason, EXIT_UNFIT)
    try:
        for stage in stages:
            stage.check(cfg)
    except ConfigError as e:
        return fail(str(e), EXIT_CONFIG)
    if submits:
        return _run_on_cluster(cfg)

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if reporter:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    summaries_path = run_dir / "stages.json"
    # Stages run on their own later (stages=[evaluation]) add to what earlier stages recorded.
    summaries = json.loads(summaries_path.read_text()) if summaries_path.is_file() else {}
    for stage in stages:
        if reporter:
            print(f"=== stage {stage.name}", flush=True)
        try:
            summaries[stage.name] = stage.run(cfg)
        except Preempted as e:
            if os.environ.get(PREEMPTED_FILE_ENV):
                Path(os.environ[PREEMPTED_FILE_ENV]).touch()
            return fail(f"stage {stage.name}: {e}", EXIT_PREEMPTED)
        except NemoLLMError as e:
            return fail(f"stage {stage.name}: {e}", EXIT_CONFIG)
        if reporter:
            summaries_path.write_text(json.dumps(summaries, indent=2) + "\n")
    if reporter:
        print(f"run directory: {run_dir.resolve()}", flush=True)
    return EXIT_OK


def _run_on_cluster(cfg: DictConfig) -> int:
    """cluster=slurm: write and submit a job per stage (print the commands with dry_run);
    cluster=interactive: run them with srun in this allocation."""
    from nemo_llm.launcher.slurm import SlurmError, run_interactive, submit

    try:
        if cfg.cluster.type == "slurm":
            ids = submit(cfg, cfg.dry_run)
            where = Path(cfg.run_dir) / "slurm"
            print(f"{'wrote' if cfg.dry_run else 'submitted'} {len(ids)} job(s); scripts, configs and logs in "
                  f"{where.resolve()}", flush=True)
            return EXIT_OK
        return run_interactive(cfg)
    except SlurmError as e:
        return fail(str(e), EXIT_CONFIG)

"""cluster=slurm: every stage becomes an sbatch script under <run_dir>/slurm/, submitted in order
with --dependency=afterok on the stage before; cluster=interactive: the same stages run one after
another with srun inside an existing allocation.

Each Slurm task is one rank (ntasks-per-node = trainer.devices): `python -m
nemo_llm.launcher.slurm_task <stage>.yaml` maps SLURM_* to the torch.distributed variables and runs
the stage on that rank, so SIGUSR1 (sent `preempt_signal_seconds` before the time limit) reaches
every training process, which saves a checkpoint and exits 75; the script then requeues the job,
which continues from that checkpoint (training and prompt learning run with resume=auto).
Data preparation can run as a job array: the tokenizer first, then one array task per share of the
shards, then the merge.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nemo_llm.errors import NemoLLMError
from nemo_llm.launcher.slurm_task import PREEMPTED_FILE_ENV

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
PREEMPTIBLE = ("training", "prompt_learning")  # save on SIGUSR1 and continue after a requeue
EXIT_PREEMPTED = 75


class SlurmError(NemoLLMError):
    """sbatch or srun failed."""


@dataclass
class StageJob:
    """One sbatch job: a stage (or a part of data preparation) with its own resolved config."""

    name: str  # file stem under <run_dir>/slurm/, and the job name's suffix
    stage: str
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    overrides: dict = field(default_factory=dict)  # merged into the run's config for this job
    array: int = 0  # >1: a job array of this many tasks
    after: list[int] = field(default_factory=list)  # indices of the jobs it waits for

    def config(self, cfg: DictConfig) -> DictConfig:
        return OmegaConf.merge(cfg, {"stages": [self.stage]}, self.overrides)


def _gpus_per_node(cfg: DictConfig, devices: int) -> int:
    c = cfg.cluster
    if c.gpus_per_node is not None:
        return min(c.gpus_per_node, devices) if devices else c.gpus_per_node
    return 0 if cfg.trainer.accelerator == "cpu" else devices


def stage_jobs(cfg: DictConfig) -> list[StageJob]:
    """The jobs of cfg.stages in order; a stage that runs the model gets trainer.num_nodes x devices tasks."""
    from nemo_llm.stages import STAGES

    jobs: list[StageJob] = []
    for stage in cfg.stages:
        after = [len(jobs) - 1] if jobs else []
        if not STAGES[stage].runs_model:
            if stage == "data_preparation" and cfg.cluster.data_preparation_array > 1:
                n = cfg.cluster.data_preparation_array
                part = {"data_preparation": {"part": "tokenizer"}}
                jobs.append(StageJob("data_preparation_tokenizer", stage, 1, 1, 0, part, 0, after))
                jobs.append(StageJob("data_preparation_shards", stage, 1, 1, 0,
                                     {"data_preparation": {"part": "shards"}}, n, [len(jobs) - 1]))
                jobs.append(StageJob("data_preparation", stage, 1, 1, 0, {}, 0, [len(jobs) - 1]))
                continue
            jobs.append(StageJob(stage, stage, 1, 1, 0, {}, 0, after))
            continue
        t = cfg.trainer
        overrides = {"resume": "auto"} if stage in PREEMPTIBLE and cfg.cluster.requeue else {}
        jobs.append(StageJob(stage, stage, t.num_nodes, t.devices, _gpus_per_node(cfg, t.devices), overrides, 0, after))
    return jobs


def _container_flags(c: DictConfig) -> list[str]:
    if not c.container_image:
        return []
    flags = [f"--container-image={c.container_image}"]
    if c.container_mounts:
        flags.append(f"--container-mounts={','.join(c.container_mounts)}")
    if not c.container_mount_home:
        flags.append("--no-container-mount-home")
    if c.container_workdir:
        flags.append(f"--container-workdir={c.container_workdir}")
    return flags


def _python(c: DictConfig) -> str:
    return c.python or ("python" if c.container_image else sys.executable)


def task_command(cfg: DictConfig, job: StageJob, config_path: Path) -> list[str]:
    """srun [container flags] python -m nemo_llm.launcher.slurm_task <config>."""
    c = cfg.cluster
    return ["srun", "--kill-on-bad-exit=1", *_container_flags(c), *c.srun_args, _python(c), "-m",
            "nemo_llm.launcher.slurm_task", str(config_path)]


def environment(cfg: DictConfig) -> dict[str, str]:
    """Variables every task of the run gets: Megatron's one-queue CUDA setting under tensor parallelism
    (so that communication and compute overlap in issue order), then cluster.env (NCCL settings...)."""
    env = {}
    if cfg.model.tensor_model_parallel_size > 1:
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
    env.update({str(k): str(v) for k, v in cfg.cluster.env.items()})
    return env


def render_script(cfg: DictConfig, job: StageJob, config_path: Path) -> str:
    """The sbatch script of one job."""
    c = cfg.cluster
    log_dir = Path(cfg.run_dir) / "slurm"
    pattern = "%A_%a" if job.array > 1 else "%j"
    lines = ["#!/bin/bash", f"# Stage {job.stage} of run {cfg.run_name}, written by `python main.py cluster=slurm`.",
             f"#SBATCH --job-name={c.job_name_prefix}-{cfg.run_name}-{job.name}",
             f"#SBATCH --nodes={job.nodes}", f"#SBATCH --ntasks-per-node={job.tasks_per_node}"]
    if job.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
    lines.append(f"#SBATCH --time={c.time_limit}")
    for key in ("partition", "account", "qos", "mem"):
        if c[key] is not None:
            lines.append(f"#SBATCH --{key}={c[key]}")
    if c.exclusive:
        lines.append("#SBATCH --exclusive")
    lines += [f"#SBATCH --output={log_dir / f'{job.name}-{pattern}.out'}",
              f"#SBATCH --error={log_dir / f'{job.name}-{pattern}.err'}", "#SBATCH --open-mode=append"]
    preemptible = job.stage in PREEMPTIBLE and c.requeue
    if preemptible:
        lines += [f"#SBATCH --signal=USR1@{c.preempt_signal_seconds}", "#SBATCH --requeue"]
    if job.array > 1:
        lines.append(f"#SBATCH --array=0-{job.array - 1}")
    lines += [f"#SBATCH {arg}" for arg in c.sbatch_args]
    lines.append(f"#SBATCH --chdir={Path.cwd()}")  # relative paths of the config mean what they meant here
    lines += ["", "set -uo pipefail"]
    if not c.container_image:  # the code this run was started from, installed or not
        lines.append(f'export PYTHONPATH={shlex.quote(str(PACKAGE_ROOT))}"${{PYTHONPATH:+:$PYTHONPATH}}"')
    lines += [f"export {k}={shlex.quote(v)}" for k, v in environment(cfg).items()]
    if preemptible:
        # The first task to exit 75 makes srun stop the others, and their status may hide the 75: every
        # preempted task also creates this file.
        marker = shlex.quote(str(log_dir / f"{job.name}-")) + '"$SLURM_JOB_ID.preempted"'
        lines += [f"preempted={marker}", 'rm -f "$preempted"', f'export {PREEMPTED_FILE_ENV}="$preempted"']
    lines.append(shlex.join(task_command(cfg, job, config_path)))
    lines.append("status=$?")
    if preemptible:
        lines += [f'if [ "$status" -eq {EXIT_PREEMPTED} ] || [ -e "$preempted" ]; then',
                  '    rm -f "$preempted"',
                  '    echo "preempted: requeueing job $SLURM_JOB_ID, which continues from its last checkpoint"',
                  '    scontrol requeue "$SLURM_JOB_ID"',
                  "fi"]
    lines.append('exit "$status"')
    return "\n".join(lines) + "\n"


def write_jobs(cfg: DictConfig) -> list[tuple[StageJob, Path]]:
    """<run_dir>/slurm/<job>.yaml (the resolved config of the job) and <job>.sbatch for every job."""
    out = Path(cfg.run_dir) / "slurm"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for job in stage_jobs(cfg):
        config_path = out / f"{job.name}.yaml"
        config_path.write_text(OmegaConf.to_yaml(job.config(cfg), resolve=True))
        script = out / f"{job.name}.sbatch"
        script.write_text(render_script(cfg, job, config_path))
        written.append((job, script))
    return written


def sbatch_command(script: Path, dependencies: list[str]) -> list[str]:
    dependency = [f"--dependency=afterok:{':'.join(dependencies)}"] if dependencies else []
    return ["sbatch", "--parsable", *dependency, str(script)]


def submit(cfg: DictConfig, dry_run: bool, log=print) -> list[str]:
    """Write the jobs and submit them in order (each after the one before); returns the job ids. With
    dry_run the sbatch commands are printed instead, with placeholders for the ids."""
    ids: list[str] = []
    for index, (job, script) in enumerate(write_jobs(cfg)):
        dependencies = [ids[i] for i in job.after]
        command = sbatch_command(script, dependencies)
        if dry_run:
            ids.append(f"<job{index}>")
            log(shlex.join(command))
            continue
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SlurmError(f"sbatch {script.name} failed: {result.stderr.strip() or result.stdout.strip()}"
                             + (f" (jobs {', '.join(ids)} were submitted)" if ids else ""))
        ids.append(result.stdout.strip().split(";")[0])
        log(f"submitted {job.name} as job {ids[-1]}" + (f" (after {', '.join(dependencies)})" if dependencies else ""))
    return ids


def run_interactive(cfg: DictConfig, log=print) -> int:
    """Inside an allocation (salloc): each job's tasks with srun, one stage after another; the exit
    status of the first that fails, else 0. A preempted stage is not requeued (there is no job to
    requeue): run the same command again, with resume=auto."""
    if "SLURM_JOB_ID" not in os.environ:
        raise SlurmError("cluster=interactive runs inside a Slurm allocation: start one with salloc (or use "
                         "cluster=slurm to submit batch jobs)")
    for job, _ in write_jobs(cfg):
        if job.array > 1:
            raise SlurmError("cluster=interactive runs no job arrays: set cluster.data_preparation_array=1")
        config_path = Path(cfg.run_dir) / "slurm" / f"{job.name}.yaml"
        command = task_command(cfg, job, config_path)
        # Explicit counts: srun would otherwise take the allocation's (SLURM_NTASKS) for every step.
        command[1:1] = [f"--nodes={job.nodes}", f"--ntasks={job.nodes * job.tasks_per_node}",
                        f"--ntasks-per-node={job.tasks_per_node}"] + (
            [f"--gpus-per-node={job.gpus_per_node}"] if job.gpus_per_node else [])
        log(f"=== {job.name}: {shlex.join(command)}")
        status = subprocess.run(command, env={**os.environ, **environment(cfg)}).returncode
        if status != 0:
            return status
    return 0


# --- inside a task --------------------------------------------------------------------------------

def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: "node[003-005,9],gpu1" -> "node003"."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise SlurmError(f"cannot read the Slurm node list {nodelist!r}")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def rank_environment(env: dict[str, str], master_port: int | None = None) -> dict[str, str]:
    """torch.distributed's variables from a Slurm task's: one rank per task, the master on the first
    node of the allocation, a port derived from the job id (the same on every node)."""
    try:
        job_id = int(env["SLURM_JOB_ID"])
        ntasks, procid = int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"])
        local_rank, node_id = int(env["SLURM_LOCALID"]), int(env.get("SLURM_NODEID", 0))
        nodelist = env.get("SLURM_JOB_NODELIST") or env["SLURM_NODELIST"]
    except KeyError as e:
        raise SlurmError(f"{e.args[0]} is not set: nemo_llm.launcher.slurm_task runs as a task of srun") from None
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    return {"RANK": str(procid), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(ntasks),
            "LOCAL_WORLD_SIZE": str(ntasks // nodes), "GROUP_RANK": str(node_id), "NODE_RANK": str(node_id),
            "MASTER_ADDR": first_host(nodelist), "MASTER_PORT": str(master_port or 10000 + job_id % 50000)}

"""cluster=slurm: the generated scripts (golden files), the task environment, dry runs, and a real
one-node Slurm (scripts/slurm/local_cluster.sh) running a chain, a job array and a preemption
requeue. The real-Slurm tests skip, saying why, where Slurm cannot start."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_llm.config import compose
from nemo_llm.launcher import slurm
from nemo_llm.launcher.slurm import first_host, rank_environment, render_script, stage_jobs
from tests.conftest import REPO, run_main

GOLDEN = Path(__file__).parent / "golden"
CHAIN = ["trainer.accelerator=cpu", "trainer.devices=2", "model.micro_batch_size=8", "trainer.max_steps=4",
         "trainer.val_check_interval=4", "model.optim.sched.warmup_steps=1", "training.progress_bar=false",
         "evaluation.max_batches=2", "evaluation.generate.max_new_tokens=4"]
LAYOUTS = {
    "cpu_chain": ["cluster=slurm", "run_dir=/results/tiny", *CHAIN, "cluster.data_preparation_array=3",
                  "cluster.python=python3"],
    "gpu_tp2_pp2_container": [
        "cluster=slurm", "+model=gpt_5b", "run_dir=/results/gpt_5b", "trainer.num_nodes=2", "trainer.devices=8",
        "model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2", "cluster.partition=batch",
        "cluster.account=llm", "cluster.qos=high", "cluster.exclusive=true", "cluster.mem=0",
        "cluster.time_limit=1-00:00:00", "cluster.container_image='nvcr.io#nvidia/pytorch:25.01-py3'",
        "cluster.container_mounts=[/lustre/data:/data,/lustre/results:/results]", "cluster.container_workdir=/workspace",
        "+cluster.env.NCCL_IB_TIMEOUT=22", "+cluster.env.NCCL_DEBUG=WARN", "cluster.sbatch_args=['--constraint=h100']",
        "cluster.preempt_signal_seconds=300"],
    "gpu_no_container": ["cluster=slurm", "+model=gpt_126m", "run_dir=/results/gpt_126m", "trainer.devices=8",
                         "stages=[training,prompt_learning]", "prompt_learning=squad", "cluster.python=python3",
                         "cluster.requeue=false"],
}


def scripts_of(overrides):
    cfg = compose(overrides)
    return {job.name: render_script(cfg, job, Path(cfg.run_dir) / "slurm" / f"{job.name}.yaml")
            for job in stage_jobs(cfg)}


def normalised(text: str) -> str:
    """Machine paths as placeholders: the directory the run was started from and the package's root."""
    return text.replace(str(Path.cwd()), "<cwd>").replace(str(slurm.PACKAGE_ROOT), "<package>")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scripts_match_the_golden_files(layout):
    """To refresh after an intended change: NEMO_LLM_UPDATE_GOLDEN=1 pytest tests/launcher/test_slurm.py."""
    for name, text in scripts_of(LAYOUTS[layout]).items():
        golden = GOLDEN / layout / f"{name}.sbatch"
        if os.environ.get("NEMO_LLM_UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(normalised(text))
        assert normalised(text) == golden.read_text(), f"{layout}/{name}.sbatch"


def test_jobs_follow_the_stages_and_their_layouts():
    cfg = compose(LAYOUTS["gpu_tp2_pp2_container"])
    jobs = stage_jobs(cfg)
    assert [j.name for j in jobs] == ["data_preparation", "training", "evaluation"]
    assert [(j.nodes, j.tasks_per_node, j.gpus_per_node) for j in jobs] == [(1, 1, 0), (2, 8, 8), (2, 8, 8)]
    assert [j.after for j in jobs] == [[], [0], [1]]
    assert jobs[1].config(cfg).resume == "auto" and jobs[1].config(cfg).stages == ["training"]
    arrays = stage_jobs(compose(LAYOUTS["cpu_chain"]))
    assert [(j.name, j.array, j.after) for j in arrays[:3]] == [
        ("data_preparation_tokenizer", 0, []), ("data_preparation_shards", 3, [0]), ("data_preparation", 0, [1])]


def test_task_environment_from_slurm_variables():
    env = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_PROCID": "11", "SLURM_LOCALID": "3",
           "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[007-008]", "SLURM_JOB_NUM_NODES": "2"}
    assert rank_environment(env) == {"RANK": "11", "LOCAL_RANK": "3", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8",
                                     "GROUP_RANK": "1", "NODE_RANK": "1", "MASTER_ADDR": "gpu007",
                                     "MASTER_PORT": str(10000 + 4242 % 50000)}
    assert rank_environment(env, master_port=29500)["MASTER_PORT"] == "29500"
    assert first_host("node1") == "node1" and first_host("a[3,5-9],b2") == "a3" and first_host("n[09-12]") == "n09"
    with pytest.raises(slurm.SlurmError, match="SLURM_JOB_ID is not set"):
        rank_environment({})


def test_dry_run_writes_the_scripts_and_prints_the_commands(tmp_path):
    result = run_main(["cluster=slurm", "dry_run=true", f"run_dir={tmp_path / 'run'}", *CHAIN])
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "run" / "slurm"
    commands = [line for line in result.stdout.splitlines() if line.startswith("sbatch ")]
    assert commands == [f"sbatch --parsable {out / 'data_preparation.sbatch'}",
                        f"sbatch --parsable '--dependency=afterok:<job0>' {out / 'training.sbatch'}",
                        f"sbatch --parsable '--dependency=afterok:<job1>' {out / 'evaluation.sbatch'}"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}.{ext}" for s in ("data_preparation", "training", "evaluation") for ext in ("sbatch", "yaml"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cluster_errors_are_one_line(tmp_path, monkeypatch):
    from nemo_llm.config import ConfigError, validate

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    outside = run_main(["cluster=interactive", f"run_dir={tmp_path}", "stages=[data_preparation]"])
    assert outside.returncode == 2
    assert outside.stderr.strip().splitlines()[-1] == (
        "error: cluster=interactive runs inside a Slurm allocation: start one with salloc (or use cluster=slurm "
        "to submit batch jobs)")
    with pytest.raises(ConfigError, match="cluster.type=pbs is not supported: use one of local, slurm, interactive"):
        validate(compose(["cluster.type=pbs"]))
    with pytest.raises(ConfigError, match="cluster.data_preparation_array needs cluster=slurm"):
        validate(compose(["cluster.data_preparation_array=4"]))


# --- a real Slurm --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node Slurm on this machine; skips with the reason when it cannot start."""
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "NEMO_LLM_SLURM_DIR": str(state)}
    if os.geteuid() != 0:
        pytest.skip("a local Slurm needs root to run its daemons")
    try:
        started = subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "local_cluster.sh"), "start"], env=env,
                                 capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"Slurm could not start: {e}")
    if started.returncode != 0:
        reason = (started.stderr or started.stdout).strip().splitlines()
        pytest.skip(f"Slurm could not start: {reason[-1] if reason else started.returncode}")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "local_cluster.sh"), "stop"], env=env)
    os.environ.pop("SLURM_CONF", None)


def job_info(job_id: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}


def wait_for(job_ids: list[str], timeout_s: float, on_pending=None) -> None:
    """Until every job (every task of an array) has ended; a requeued job passes through states that
    squeue does not list, so each job's own state is read."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        states = {}
        for job_id in job_ids:
            text = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
            states[job_id] = re.findall(r"JobState=(\S+)", text) or ["UNKNOWN"]
        if all(state in ENDED for job_states in states.values() for state in job_states):
            return
        if on_pending:
            on_pending(states)
        time.sleep(1)
    raise AssertionError(f"jobs not ended after {timeout_s} s: {states}")


def submitted_ids(stdout: str) -> list[str]:
    return re.findall(r"submitted \S+ as job (\d+)", stdout)


@pytest.mark.slow
def test_a_chain_runs_on_slurm_in_order(slurm_cluster, tmp_path):
    """Data preparation (tokenizer, a 2-task job array over the shards, the merge), training with 2 CPU
    tasks on gloo, evaluation: each job starts after the one it depends on ended, every one completes."""
    run_dir = tmp_path / "run"
    result = run_main(["cluster=slurm", f"run_dir={run_dir}", *CHAIN, "cluster.data_preparation_array=2",
                       "data_preparation.shard_documents=100"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ids = submitted_ids(result.stdout)
    assert len(ids) == 5
    wait_for(ids, 600)
    infos = [job_info(i) for i in ids]
    logs = "\n".join(p.read_text() for p in sorted((run_dir / "slurm").glob("*.err")))
    assert [i["JobState"] for i in infos] == ["COMPLETED"] * 5, logs[-3000:]
    assert all(i["ExitCode"] == "0:0" for i in infos)
    for before, after in zip(infos, infos[1:]):  # afterok: a job starts once the one before has ended
        assert after["StartTime"] >= before["EndTime"], (before, after)
    shards = sorted((run_dir / "slurm").glob("data_preparation_shards-*.out"))
    assert len(shards) == 2 and all("tokenizing share" in p.read_text() for p in shards)
    assert (run_dir / "data" / "corpus_text_document.idx").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt" / ".metadata").is_file()  # two ranks: a sharded checkpoint
    assert (run_dir / "eval.json").is_file()
    training_out = next((run_dir / "slurm").glob("training-*.out")).read_text()
    assert "step 4/4" in training_out and "TP 1 x PP 1 x DP 2" in training_out


@pytest.mark.slow
def test_preempted_training_requeues_and_resumes(slurm_cluster, tmp_path):
    """SIGUSR1 (what Slurm sends before the time limit) makes training save and exit 75; the job requeues
    itself and continues from that checkpoint to the last step."""
    run_dir = tmp_path / "run"
    result = run_main(["cluster=slurm", f"run_dir={run_dir}", *CHAIN, "stages=[data_preparation,training]",
                       "trainer.max_steps=30", "trainer.val_check_interval=30"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data_job, training_job = submitted_ids(result.stdout)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert time.time() < deadline and job_info(training_job)["JobState"] in ("PENDING", "RUNNING")
        time.sleep(1)
    subprocess.run(["scancel", "--signal=USR1", training_job], check=True)

    def start_requeued_now(queued):  # Slurm holds a requeued job for a while before it may start again
        if job_info(training_job).get("Reason") == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={training_job}", "StartTime=now"])

    wait_for([data_job, training_job], 600, start_requeued_now)
    info = job_info(training_job)
    out = next((run_dir / "slurm").glob("training-*.out")).read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", out[-2000:]
    assert "preempted: requeueing job" in out and f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in out
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 31))


@pytest.mark.slow
def test_interactive_runs_the_stages_with_srun_inside_an_allocation(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    command = ["salloc", "--nodes=1", "--ntasks=2", sys.executable, str(REPO / "main.py"), "cluster=interactive",
               f"run_dir={run_dir}", *CHAIN, "trainer.max_steps=2", "trainer.val_check_interval=2",
               "stages=[data_preparation,training]"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "=== data_preparation: srun --nodes=1 --ntasks=1" in result.stdout
    assert "=== training: srun --nodes=1 --ntasks=2" in result.stdout
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]

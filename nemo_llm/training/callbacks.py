"""Per-step throughput and the run directory's metrics files."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist

METRICS_FILE = "metrics.jsonl"
VAL_METRICS_FILE = "val_metrics.jsonl"


def peak_memory_bytes(device: torch.device) -> int:
    """The most this process has held: CUDA memory allocated on a GPU, resident memory on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class StepMetrics(pl.Callback):
    """Measures each optimizer step, shows tokens/s, TFLOP/s and MFU in the progress bar, and appends
    one JSON object per logged step to <run_dir>/metrics.jsonl with the keys step, loss, lr,
    grad_norm, tokens_per_s, tflops_per_gpu, mfu, consumed_samples, step_time_s; each validation
    appends step, val_loss, val_ppl to val_metrics.jsonl. Rank 0 writes.

    A step's line is written at the end of the next step (or before a validation, a checkpoint, the
    end of training or an error): by then its loss and gradient norm are computed, so reading them
    does not make the host wait for the GPU, which would then sit idle while the host logs and
    fetches the next batch."""

    def __init__(self, run_dir: str | Path, tokens_per_step: int, flops_per_step: float, world_size: int,
                 peak_tflops_per_device: float, log_every_n_steps: int, print_lines: bool):
        self.run_dir = Path(run_dir)
        self.tokens_per_step = tokens_per_step
        self.flops_per_step = flops_per_step
        self.world_size = world_size
        self.peak_tflops = peak_tflops_per_device
        self.log_every_n_steps = log_every_n_steps
        self.print_lines = print_lines
        self._start = 0.0
        self._pending: dict | None = None  # the last logged step's record, its tensors not yet read

    def on_train_start(self, trainer, pl_module) -> None:
        # A run owns these files from its first step on: lines an earlier, crashed run wrote after
        # the checkpoint this run starts from would be written again.
        if trainer.is_global_zero:
            for name in (METRICS_FILE, VAL_METRICS_FILE):
                self._keep_until(name, trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Host time, with no wait for the GPU here: the step already waited for its backward pass (the
        # finite-gradient check), so only the optimizer's kernels are still running, and they delay the
        # next step by as much. In steady state the interval is the step's device time, and the GPU
        # keeps working while the host logs and fetches the next batch.
        seconds = time.perf_counter() - self._start
        tflops = self.flops_per_step / seconds / self.world_size / 1e12
        speed = {"tokens_per_s": self.tokens_per_step / seconds, "tflops_per_gpu": tflops,
                 "mfu": tflops / self.peak_tflops}
        pl_module.log_dict(speed, prog_bar=True)
        self.write_pending(trainer)
        step = trainer.global_step
        if step % self.log_every_n_steps and step != trainer.max_steps:
            return
        self._pending = {"step": step, **pl_module.step_metrics, **speed, "consumed_samples": pl_module.consumed_samples,
                         "step_time_s": seconds, "max_memory_bytes": peak_memory_bytes(pl_module.device)}

    def write_pending(self, trainer) -> None:
        """Append the record held back from the last logged step, if any."""
        if self._pending is None:
            return
        record = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in self._pending.items()}
        self._pending = None
        if trainer.is_global_zero:
            self._append(METRICS_FILE, record)
            if self.print_lines:
                print(f"step {record['step']}/{trainer.max_steps} loss {record['loss']:.4f} lr {record['lr']:.3g} "
                      f"grad_norm {record['grad_norm']:.3f} {record['tokens_per_s']:.0f} tokens/s "
                      f"{record['tflops_per_gpu']:.3g} TFLOP/s MFU {record['mfu']:.1%}", flush=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.write_pending(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.write_pending(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.write_pending(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.write_pending(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or "val_loss" not in trainer.callback_metrics:
            return
        val_loss = float(trainer.callback_metrics["val_loss"])
        record = {"step": trainer.global_step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
        if trainer.is_global_zero:
            self._append(VAL_METRICS_FILE, record)
            if self.print_lines:
                print(f"validation at step {record['step']}: loss {val_loss:.4f} perplexity {record['val_ppl']:.2f}",
                      flush=True)

    def _keep_until(self, name: str, step: int) -> None:
        path = self.run_dir / name
        if not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)

    def _append(self, name: str, record: dict) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / name, "a") as f:
            f.write(json.dumps(record) + "\n")


class Preemption(pl.Callback):
    """SIGTERM or SIGUSR1 (what Slurm sends before a time limit or a preemption): finish the current
    step, save a checkpoint, stop. Every rank learns of a signal any rank received at the end of each
    step (one all-reduce of a flag), so all save the same step together."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, checkpoint_path: str | Path):
        self.checkpoint_path = Path(checkpoint_path)
        self.requested = False
        self.preempted = False

    def on_train_start(self, trainer, pl_module) -> None:
        # Installed here, after Lightning's own handlers, which would stop without saving.
        for signum in self.SIGNALS:
            signal.signal(signum, self._request)

    def _request(self, signum, frame) -> None:
        self.requested = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        flag = torch.tensor(float(self.requested), device=pl_module.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and not self.preempted:
            trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
            self.preempted = True
            trainer.should_stop = True

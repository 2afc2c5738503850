"""Training throughput on one device: nemo_llm's training path against Hugging Face GPT-2 (SDPA, eager
and compiled) and a compiled nanoGPT-style reference, at the same shape, in one process.

Every implementation trains the same GPT shape on random tokens in bf16 autocast with fp32 master
weights and AdamW (fused on a GPU), gradient clipping at 1.0, no dropout unless --dropout. nemo_llm
runs as a user runs it: a composed config, GPTPretrainModule under a Lightning Trainer with
MegatronStrategy, its engine step and optimizer, timed by the StepMetrics callback of the
training stage. Variants of the nemo_llm path (--variant NAME=key=value,key=value) measure each
speed lever against the default.

Model FLOPs per token, for every implementation: 6 N + 12 l h s + 6 V h (N: parameters outside the
embeddings); MFU against the GPU's dense bf16 peak (989 TFLOP/s on H100/H200) or, on a CPU, the
matmul rate this process reaches (measured first, as is the GPU's matmul ceiling).

    python scripts/bench_gpu.py --shape 1.3b --out results/bench_gpu.json
    python scripts/bench_gpu.py --shape 7b --impl nemo_llm --variant full=model.activations_checkpoint_granularity=full,\
model.activations_checkpoint_method=uniform,model.activations_checkpoint_num_layers=1
    python scripts/bench_gpu.py --layer-recompute --shape 1.3b      # recompute overhead of one layer
    python scripts/bench_gpu.py --device cpu --shape tiny --steps 3  # what the tests run

JSON on stdout (and in --out): the ceiling, then one record per run with tokens/s, model TFLOP/s,
MFU, the step time (the mean over the timed steps, waiting for the device only before the first and
after the last, so no run pays a per-step wait), the peak memory and, for nemo_llm, the plan's
memory estimate.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class Shape:
    num_layers: int
    hidden: int
    heads: int
    seq: int
    micro_batch: int
    vocab: int

    def non_embedding_parameters(self) -> int:
        """Layers (QKV, projection, MLP with biases, two norms) and the final norm."""
        h = self.hidden
        return self.num_layers * (12 * h * h + 13 * h) + 2 * h

    def model_flops_per_token(self) -> float:
        return (6 * self.non_embedding_parameters() + 12 * self.num_layers * self.hidden * self.seq
                + 6 * self.vocab * self.hidden)

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.seq


SHAPES = {
    # GPT-3 XL, the shape of the H100 baseline figures
    "1.3b": Shape(num_layers=24, hidden=2048, heads=16, seq=2048, micro_batch=4, vocab=50304),
    "1.3b-4k": Shape(num_layers=24, hidden=2048, heads=16, seq=4096, micro_batch=2, vocab=50304),
    # GPT-3 6.7B
    "7b": Shape(num_layers=32, hidden=4096, heads=32, seq=2048, micro_batch=1, vocab=50304),
    # a shape a 2-core CPU trains in a fraction of a second per step, for CPU comparisons of the levers
    "cpu-small": Shape(num_layers=4, hidden=256, heads=4, seq=256, micro_batch=4, vocab=8192),
    "tiny": Shape(num_layers=2, hidden=64, heads=4, seq=64, micro_batch=2, vocab=512),
}


# Device ----------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling_tflops(device: torch.device) -> float:
    """The best dense matmul rate this process reaches: bf16 8192^3 on a GPU, fp32 on a CPU."""
    if device.type != "cuda":
        from nemo_llm.training.throughput import measure_cpu_tflops

        return measure_cpu_tflops(torch.float32)
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    iterations = 30
    start = time.perf_counter()
    for _ in range(iterations):
        a @ b
    synchronize(device)
    return 2 * n**3 * iterations / (time.perf_counter() - start) / 1e12


def peak_tflops(device: torch.device, ceiling: float) -> float:
    if device.type == "cuda":
        from nemo_llm.training.throughput import gpu_peak_tflops

        return gpu_peak_tflops(torch.cuda.get_device_name(device), "bf16-mixed") or ceiling
    return ceiling


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def random_batch(shape: Shape, device: torch.device, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, shape.vocab, (shape.micro_batch, shape.seq + 1), generator=generator)
    tokens = tokens.to(device, non_blocking=True)
    return tokens[:, :-1], tokens[:, 1:]


# Plain training loop (HF and the reference) -----------------------------------------------------


def train_plain(model: nn.Module, shape: Shape, device: torch.device, steps: int, warmup: int,
                compile_model: bool) -> dict:
    """bf16 autocast over fp32 parameters, fused AdamW on a GPU, clipping at 1.0; step times."""
    model.to(device).train()
    forward = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.type == "cuda" or None)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(warmup + steps):
        if step == warmup:  # the device is waited for before the first timed step and after the last only
            synchronize(device)
            start = time.perf_counter()
        tokens, labels = random_batch(shape, device, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = forward(tokens)
            logits = getattr(logits, "logits", logits)
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            losses.append(loss.detach())
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    return {"step_time_s": seconds, "losses": [float(x) for x in losses]}


def hf_gpt2(shape: Shape, dropout: float) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=shape.vocab, n_positions=shape.seq, n_embd=shape.hidden, n_layer=shape.num_layers,
                        n_head=shape.heads, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        use_cache=False)
    config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(config)


class ReferenceBlock(nn.Module):
    """Pre-norm block with one fused QKV projection and SDPA causal attention."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.out = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.up, self.down = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in self.qkv(self.norm1(x)).split(h, dim=-1))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        x = x + F.dropout(self.out(y.transpose(1, 2).reshape(b, s, h)), p, self.training)
        return x + F.dropout(self.down(F.gelu(self.up(self.norm2(x)), approximate="tanh")), p, self.training)


class ReferenceGPT(nn.Module):
    """The nanoGPT-style baseline: learned positions, tied output layer, whole model compiled."""

    def __init__(self, shape: Shape, dropout: float):
        super().__init__()
        self.tokens = nn.Embedding(shape.vocab, shape.hidden)
        self.positions = nn.Embedding(shape.seq, shape.hidden)
        self.blocks = nn.ModuleList(ReferenceBlock(shape.hidden, shape.heads, dropout) for _ in range(shape.num_layers))
        self.norm = nn.LayerNorm(shape.hidden)
        self.head = nn.Linear(shape.hidden, shape.vocab, bias=False)
        self.head.weight = self.tokens.weight
        self.dropout = dropout
        for name, param in self.named_parameters():
            if param.ndim == 2:
                std = 0.02 / math.sqrt(2 * shape.num_layers) if name.endswith(("out.weight", "down.weight")) else 0.02
                nn.init.normal_(param, std=std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = F.dropout(self.tokens(tokens) + self.positions(positions), self.dropout, self.training)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


# nemo_llm --------------------------------------------------------------------------------------


def nemo_llm_config(shape: Shape, device: torch.device, dropout: float, overrides: list[str], run_dir: str,
                    max_steps: int):
    from nemo_llm.config import compose, validate

    cfg = compose([
        "model=gpt_126m", f"run_dir={run_dir}", f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        "trainer.devices=1", "trainer.num_nodes=1", "trainer.precision=bf16-mixed", f"trainer.max_steps={max_steps}",
        f"trainer.val_check_interval={max_steps}", "trainer.log_every_n_steps=1", "training.progress_bar=false",
        "training.tensorboard=false", f"model.num_layers={shape.num_layers}", f"model.hidden_size={shape.hidden}",
        f"model.ffn_hidden_size={4 * shape.hidden}", f"model.num_attention_heads={shape.heads}",
        f"model.encoder_seq_length={shape.seq}", f"model.max_position_embeddings={shape.seq}",
        f"model.micro_batch_size={shape.micro_batch}", f"model.global_batch_size={shape.micro_batch}",
        f"model.hidden_dropout={dropout}", f"model.attention_dropout={dropout}",
        "model.activations_checkpoint_granularity=null", "model.make_vocab_size_divisible_by=128",
        "model.optim.sched.warmup_steps=0", "model.optim.sched.constant_steps=0",
        *overrides,
    ])
    validate(cfg)
    return cfg


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, shape: Shape, samples: int):
        self.shape, self.samples = shape, samples

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        tokens = torch.randint(0, self.shape.vocab, (self.shape.seq + 1,), generator=g)
        return {"tokens": tokens[:-1], "labels": tokens[1:]}


def cycle_timer(warmup: int, steps: int):
    """A callback timing the training loop from the end of the warm-up to the end of the last step, waiting
    for the device only at those two points (a wait in every step would leave the GPU idle while the host
    logs and fetches a batch): whole loop cycles, data loading and Lightning's bookkeeping included."""
    import pytorch_lightning as pl

    class CycleTimer(pl.Callback):
        def __init__(self):
            self.seconds_per_step = 0.0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == warmup - 1:
                synchronize(pl_module.device)
                self.start = time.perf_counter()
            elif batch_idx == warmup + steps - 1:
                synchronize(pl_module.device)
                self.seconds_per_step = (time.perf_counter() - self.start) / steps

    return CycleTimer()


def train_nemo_llm(shape: Shape, device: torch.device, steps: int, warmup: int, dropout: float,
                   overrides: list[str], peak: float) -> dict:
    """The training stage's own pieces: GPTPretrainModule, build_trainer (MegatronStrategy), StepMetrics."""
    from omegaconf import OmegaConf

    from nemo_llm.models.gpt import gpt_config_from
    from nemo_llm.plan import estimate_memory
    from nemo_llm.training.callbacks import METRICS_FILE, StepMetrics
    from nemo_llm.training.module import GPTPretrainModule
    from nemo_llm.training.pretrain import build_trainer, engine_settings

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = nemo_llm_config(shape, device, dropout, overrides, run_dir, warmup + steps)
        m = cfg.model
        gpt_config = gpt_config_from(m, shape.vocab)
        torch.manual_seed(cfg.seed)
        module = GPTPretrainModule(
            gpt_config=asdict(gpt_config), optim=OmegaConf.to_container(m.optim, resolve=True),
            micro_batch_size=m.micro_batch_size, global_batch_size=m.global_batch_size, max_steps=warmup + steps,
            gradient_clip_val=cfg.trainer.gradient_clip_val, engine=asdict(engine_settings(cfg)), seed=cfg.seed)
        metrics = StepMetrics(run_dir, tokens_per_step=shape.tokens_per_step,
                              flops_per_step=shape.model_flops_per_token() * shape.tokens_per_step, world_size=1,
                              peak_tflops_per_device=peak, log_every_n_steps=1, print_lines=False)
        timer = cycle_timer(warmup, steps)
        trainer = build_trainer(cfg, [metrics, timer], has_validation=False, checkpointing=False)
        loader = torch.utils.data.DataLoader(RandomTokens(shape, shape.micro_batch * (warmup + steps)),
                                             batch_size=shape.micro_batch, pin_memory=device.type == "cuda")
        trainer.fit(module, train_dataloaders=loader)
        records = [json.loads(line) for line in (Path(run_dir) / METRICS_FILE).read_text().splitlines()]
        estimate = estimate_memory(cfg, gpt_config.vocab_size, flash_attention=device.type == "cuda")
    timed = records[warmup:]
    return {"step_time_s": timer.seconds_per_step, "losses": [r["loss"] for r in timed],
            # what metrics.jsonl reports: training_step alone, without data loading and the loop around it
            "train_step_time_s": statistics.median(r["step_time_s"] for r in timed),
            "estimated_memory_bytes": int(estimate.total)}


# Runs ------------------------------------------------------------------------------------------


def summarize(name: str, result: dict, shape: Shape, peak: float, device: torch.device) -> dict:
    step = result["step_time_s"]
    tflops = shape.model_flops_per_token() * shape.tokens_per_step / step / 1e12
    record = {"impl": name, "step_time_s": step, "tokens_per_s": shape.tokens_per_step / step,
              "model_tflops": tflops, "mfu": tflops / peak, "peak_memory_bytes": peak_memory(device),
              "final_loss": result["losses"][-1], "steps_timed": len(result["losses"])}
    if "train_step_time_s" in result:
        record["train_step_time_s"] = result["train_step_time_s"]
    if "estimated_memory_bytes" in result:
        record["estimated_memory_bytes"] = result["estimated_memory_bytes"]
        if record["peak_memory_bytes"]:
            record["estimate_error"] = result["estimated_memory_bytes"] / record["peak_memory_bytes"] - 1
    return record


def run_one(name: str, args, shape: Shape, device: torch.device, peak: float, overrides: list[str]) -> dict:
    reset_memory(device)
    torch.manual_seed(0)
    if name.startswith("nemo_llm"):
        result = train_nemo_llm(shape, device, args.steps, args.warmup, args.dropout, overrides, peak)
    elif name in ("hf_eager", "hf_compiled"):
        result = train_plain(hf_gpt2(shape, args.dropout), shape, device, args.steps, args.warmup,
                             compile_model=name == "hf_compiled")
    elif name == "nanogpt_compiled":
        result = train_plain(ReferenceGPT(shape, args.dropout), shape, device, args.steps, args.warmup,
                             compile_model=True)
    else:
        raise SystemExit(f"unknown --impl {name}: choose from nemo_llm, hf_eager, hf_compiled, nanogpt_compiled")
    record = summarize(name, result, shape, peak, device)
    if overrides:
        record["overrides"] = overrides
    return record


# Recompute overhead of one layer --------------------------------------------------------------


def layer_recompute(shape: Shape, device: torch.device, steps: int, warmup: int) -> list[dict]:
    """Forward + backward time of one TransformerLayer under each recompute policy, as the overheads in
    Korthikanti et al. (2022), Table 4 are measured (one 22B layer: full +39%, selective +7%)."""
    from nemo_llm.models.gpt import GPTConfig, GPTModel
    from nemo_llm.parallel.recompute import apply_recompute

    config = GPTConfig(vocab_size=shape.vocab, max_position_embeddings=shape.seq, num_layers=1,
                       hidden_size=shape.hidden, ffn_hidden_size=4 * shape.hidden, num_attention_heads=shape.heads,
                       num_query_groups=shape.heads, hidden_dropout=0.0, attention_dropout=0.0)
    policies = {"none": {"granularity": None}, "selective": {"granularity": "selective"},
                "full": {"granularity": "full", "method": "uniform", "num_layers": 1}}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(shape.micro_batch, shape.seq, shape.hidden, device=device, dtype=dtype, requires_grad=True)
    records = []
    for name, policy in policies.items():
        torch.manual_seed(0)
        model = GPTModel(config).to(device=device, dtype=dtype)
        apply_recompute(model, **policy)
        block = model.decoder
        times = []
        for step in range(warmup + steps):
            synchronize(device)
            start = time.perf_counter()
            block(x).sum().backward()
            synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
        records.append({"recompute": name, "layer_step_time_s": statistics.median(times)})
    base = records[0]["layer_step_time_s"]
    for record in records:
        record["overhead"] = record["layer_step_time_s"] / base - 1
    return records


# Main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default="1.3b", choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=20, help="timed steps (their mean is reported)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="steps before timing, at least 1 (compilation happens here)")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--impl", default="nemo_llm,hf_eager,hf_compiled,nanogpt_compiled",
                        help="comma-separated: nemo_llm, hf_eager, hf_compiled, nanogpt_compiled")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=key=value,key=value: one more nemo_llm run with these config overrides")
    parser.add_argument("--layer-recompute", action="store_true",
                        help="time one layer's forward + backward under each recompute policy instead")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    return parser.parse_args(argv)


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, overrides = text.partition("=")
    if not sep or not name or not overrides:
        raise SystemExit(f"--variant {text!r}: expected NAME=key=value[,key=value...]")
    return f"nemo_llm:{name}", overrides.split(",")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is visible to this process (use --device cpu)")
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("--warmup and --steps must be at least 1")
    shape = SHAPES[args.shape]
    ceiling = matmul_ceiling_tflops(device)
    peak = peak_tflops(device, ceiling)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "shape": {"name": args.shape, **asdict(shape)},
              "model_flops_per_token": shape.model_flops_per_token(), "matmul_ceiling_tflops": ceiling,
              "peak_tflops": peak}
    if args.layer_recompute:
        report["layer_recompute"] = layer_recompute(shape, device, args.steps, args.warmup)
    else:
        runs = [(name, []) for name in args.impl.split(",") if name]
        runs += [parse_variant(text) for text in args.variant]
        report["runs"] = []
        for name, overrides in runs:
            record = run_one(name, args, shape, device, peak, overrides)
            report["runs"].append(record)
            print(json.dumps(record), file=sys.stderr, flush=True)
        reference = next((r for r in report["runs"] if r["impl"] == "nanogpt_compiled"), None)
        for record in report["runs"]:
            if reference is not None:
                record["speed_vs_reference"] = reference["step_time_s"] / record["step_time_s"]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()

"""Print the plan of every model preset as a Markdown table (the README's preset table).

    python scripts/preset_table.py [key=value ...]   # overrides apply to every preset
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_llm.config import CONF_DIR, compose, validate  # noqa: E402
from nemo_llm.plan import GiB, build_plan, human_count  # noqa: E402

HEADER = ["| Preset | Layers | Hidden | Heads | TP | PP | Nodes x devices | DP | Global batch | Parameters | "
          "Memory/device (plan) |",
          "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]


def table(overrides: list[str]) -> str:
    plans = []
    for path in (CONF_DIR / "model").glob("*.yaml"):
        cfg = compose([f"+model={path.stem}", *overrides])
        validate(cfg)
        plans.append((build_plan(cfg), cfg.model))
    rows = [f"| `{m.name}` | {m.num_layers} | {m.hidden_size} | {m.num_attention_heads} | {p.tensor_parallel} | "
            f"{p.pipeline_parallel} | {p.num_nodes} x {p.devices_per_node} | {p.data_parallel} | "
            f"{p.global_batch_size} | {human_count(p.parameters)} | {p.memory.total / GiB:.2f} GiB |"
            for p, m in sorted(plans, key=lambda pm: pm[0].parameters)]
    return "\n".join(HEADER + rows)


if __name__ == "__main__":
    print(table(sys.argv[1:]))

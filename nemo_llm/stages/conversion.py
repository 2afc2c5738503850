"""Stage conversion: a Hugging Face GPT-2/Llama folder -> nemo_llm checkpoint (hf_to_nemo), or a
nemo_llm checkpoint -> a folder transformers loads (nemo_to_hf). Runs on the CPU of this process."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from nemo_llm.config import ConfigError
from nemo_llm.convert import export_hf, import_hf, load
from nemo_llm.convert.hf import MODEL_INFO_FILE
from nemo_llm.stages.base import Stage
from nemo_llm.training.checkpoint import checkpoint_or_last


class ConversionStage(Stage):
    name = "conversion"

    def check(self, cfg: DictConfig) -> None:
        # An input left null is this run's checkpoint, which an earlier stage of this run may still write.
        c = cfg.conversion
        if c.input and not Path(c.input).exists():
            raise ConfigError(f"conversion.input={c.input}: no such file or directory")
        if c.direction == "hf_to_nemo" and not (Path(c.input) / "config.json").is_file():
            raise ConfigError(f"conversion.input={c.input} has no config.json: point it at a Hugging Face model "
                              "folder (what save_pretrained writes)")

    def run(self, cfg: DictConfig) -> dict:
        c, run_dir = cfg.conversion, Path(cfg.run_dir)
        if c.direction == "hf_to_nemo":
            checkpoint = import_hf(c.input, c.output or run_dir / "nemo")
            print(f"imported {c.input} into {checkpoint}; evaluate it with evaluation.checkpoint={checkpoint} "
                  f"(model.tokenizer: see {checkpoint.parent / MODEL_INFO_FILE})", flush=True)
            return {"direction": c.direction, "input": str(c.input), "checkpoint": str(checkpoint)}
        source = checkpoint_or_last(c.input, run_dir)
        model, tokenizer = load(source)
        # load() already dropped the vocabulary padding where the vocabulary is known.
        out_dir = export_hf(model, c.output or run_dir / "hf", tokenizer, vocab_size=model.config.vocab_size)
        print(f"exported {source} to {out_dir} (transformers: AutoModelForCausalLM.from_pretrained)", flush=True)
        return {"direction": c.direction, "input": str(source), "output": str(out_dir),
                "vocab_size": model.config.vocab_size, "tokenizer": tokenizer is not None}

"""Stage evaluation: perplexity on the held-out splits and a generated sample -> <run_dir>/eval.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from nemo_llm.config.validation import parse_splits
from nemo_llm.data.gpt_dataset import build_gpt_datasets, collate_samples
from nemo_llm.evaluation.perplexity import evaluate_perplexity
from nemo_llm.inference import generate
from nemo_llm.plan import Machine, uses_gpu
from nemo_llm.stages.base import Stage
from nemo_llm.tokenizers import build_tokenizer
from nemo_llm.training.checkpoint import last_checkpoint_path, load_model_from_checkpoint

EVAL_FILE = "eval.json"


class EvaluationStage(Stage):
    name = "evaluation"
    runs_model = True

    def run(self, cfg: DictConfig) -> dict:
        e, m = cfg.evaluation, cfg.model
        device = torch.device("cuda" if uses_gpu(cfg, Machine.detect()) else "cpu")
        checkpoint = Path(e.checkpoint or last_checkpoint_path(cfg.run_dir))
        model, meta = load_model_from_checkpoint(checkpoint, map_location=device)
        result: dict = {"checkpoint": str(checkpoint), "step": meta["global_step"]}

        datasets = build_gpt_datasets(m.data.data_prefix, parse_splits(m.data.splits_string), m.encoder_seq_length,
                                      cfg.seed, splits=tuple(e.splits), index_mapping_dir=m.data.index_mapping_dir)
        for split in e.splits:
            if split not in datasets:
                result[split] = None  # the split has no documents (model.data.splits_string)
                continue
            loader = DataLoader(datasets[split], batch_size=m.micro_batch_size, drop_last=False,
                                collate_fn=collate_samples)
            result[split] = evaluate_perplexity(model, loader, e.max_batches, device)
            print(f"{split}: loss {result[split]['loss']:.4f} perplexity {result[split]['perplexity']:.2f} "
                  f"over {result[split]['tokens']} tokens", flush=True)

        g = e.generate
        tokenizer = build_tokenizer(m.tokenizer)
        prompt = torch.tensor([tokenizer.encode(g.prompt)], dtype=torch.long, device=device)
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        ids = generate(model, prompt, g.max_new_tokens, model.config.max_position_embeddings, g.strategy,
                       g.temperature, g.top_k, g.top_p, tokenizer.eod_id, generator)
        text = tokenizer.decode(ids[0].tolist())
        result["generation"] = {"prompt": g.prompt, "strategy": g.strategy, "text": text}
        print(f"sample ({g.strategy}): {text!r}", flush=True)

        path = Path(cfg.run_dir) / EVAL_FILE
        path.write_text(json.dumps(result, indent=2) + "\n")
        return {"eval_file": str(path), **{s: result[s] for s in e.splits}}

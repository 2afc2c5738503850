"""Stage data_preparation: (download -> extract ->) sources -> (trained) tokenizer -> sharded,
parallel tokenization -> <output_dir>/<output_prefix>_text_document.{bin,idx}."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nemo_llm.data.download import expand_urls, fetch_all
from nemo_llm.data.preprocess import preprocess
from nemo_llm.data.sources import build_sources, read_documents
from nemo_llm.stages.base import Stage
from nemo_llm.tokenizers import build_tokenizer, train_sentencepiece


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


class DataPreparationStage(Stage):
    name = "data_preparation"

    def run(self, cfg: DictConfig) -> dict:
        d, tok = cfg.data_preparation, cfg.model.tokenizer
        urls = expand_urls(list(d.download.urls), d.download.url_template, d.download.file_numbers)
        if urls:
            print(f"fetching {len(urls)} file(s) into {d.download.dir}", flush=True)
            fetch_all(urls, d.download.dir, d.download.extract, workers=max(d.workers, 4))
        sources = build_sources(_plain(d.input), d.json_key, _plain(d.hf_dataset))
        trained = False
        if tok.library == "sentencepiece" and not Path(tok.model).is_file():
            print(f"training a {tok.vocab_size}-token sentencepiece {tok.model_type} model on "
                  f"{len(sources)} source(s)", flush=True)
            train_sentencepiece(read_documents(sources), tok.model, tok.vocab_size, tok.model_type,
                                tok.input_sentence_size, tok.character_coverage, seed=cfg.seed,
                                byte_fallback=tok.byte_fallback, user_defined_symbols=list(tok.user_defined_symbols))
            trained = True
        tokenizer_cfg = _plain(tok)
        vocab_size = build_tokenizer(tokenizer_cfg).vocab_size  # fails here, before any work, if unusable
        prefix = Path(d.output_dir) / f"{d.output_prefix}_text_document"
        if d.part == "tokenizer":
            return {"tokenizer": "byte" if tok.library == "byte" else tok.vocab_file or tok.model,
                    "tokenizer_trained": trained, "vocab_size": vocab_size, "part": "tokenizer"}
        share = None
        if d.part == "shards":  # one task of a Slurm job array
            share = (int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)), int(os.environ.get("SLURM_ARRAY_TASK_COUNT", 1)))
            print(f"tokenizing share {share[0]} of {share[1]} of the shards", flush=True)
        counts = preprocess(sources, tokenizer_cfg, prefix, d.append_eod, d.workers, d.shard_documents,
                            log=lambda line: print(line, flush=True), share=share)
        if share is not None:
            return {"part": "shards", "share": list(share), "shards": counts["shards"]}
        print(f"{prefix}.bin/.idx: {counts['documents']} documents, {counts['tokens']} tokens "
              f"from {counts['shards']} shard(s)", flush=True)
        return {"data_prefix": str(prefix), "tokenizer": "byte" if tok.library == "byte" else tok.vocab_file or tok.model,
                "tokenizer_trained": trained, "vocab_size": vocab_size, **counts}

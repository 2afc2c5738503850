"""Stage data_preparation: inputs -> (trained) tokenizer -> <output_dir>/<prefix>_text_document.{bin,idx}."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nemo_llm.data.preprocess import read_documents, resolve_inputs, write_indexed_dataset
from nemo_llm.stages.base import Stage
from nemo_llm.tokenizers import build_tokenizer, train_sentencepiece


class DataPreparationStage(Stage):
    name = "data_preparation"

    def run(self, cfg: DictConfig) -> dict:
        d, tok = cfg.data_preparation, cfg.model.tokenizer
        inputs = OmegaConf.to_container(d.input, resolve=True) if OmegaConf.is_config(d.input) else d.input
        files = resolve_inputs(inputs)
        source = f"{len(files)} file(s)" if files else "the embedded corpus"
        trained = False
        if tok.library == "sentencepiece" and not Path(tok.model).is_file():
            print(f"training a {tok.vocab_size}-token sentencepiece {tok.model_type} model on {source}", flush=True)
            train_sentencepiece(read_documents(files, d.json_key), tok.model, tok.vocab_size, tok.model_type,
                                tok.input_sentence_size, tok.character_coverage, seed=cfg.seed)
            trained = True
        tokenizer = build_tokenizer(tok.library, tok.model)
        prefix = Path(d.output_dir) / f"{d.output_prefix}_text_document"
        counts = write_indexed_dataset(read_documents(files, d.json_key), tokenizer, prefix, d.append_eod)
        print(f"wrote {counts['documents']} documents, {counts['tokens']} tokens to {prefix}.bin/.idx", flush=True)
        return {"data_prefix": str(prefix), "tokenizer": tok.model if tok.library == "sentencepiece" else "byte",
                "tokenizer_trained": trained, "vocab_size": tokenizer.vocab_size, **counts}

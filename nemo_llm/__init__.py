"""nemo_llm: config-driven, end-to-end training of GPT language models (see README.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from nemo_llm.models.gpt import GPTModel
    from nemo_llm.tokenizers import Tokenizer

__version__ = "0.1.0"


def load(path: str | Path, device: str = "cpu") -> tuple[GPTModel, Tokenizer | None]:
    """(model in eval mode, tokenizer or None) from a nemo_llm checkpoint (.ckpt file or checkpoint
    directory), an import_hf output, a run directory or a Hugging Face GPT-2/Llama folder.
    model(input_ids [batch, seq]) -> logits [batch, seq, vocab], vocabulary padding dropped when the
    vocabulary is known. See nemo_llm.convert.load."""
    # Imported here so that `import nemo_llm` stays free of torch.
    from nemo_llm.convert.load import load as load_model

    return load_model(path, device)


def _register_lm_eval_model() -> None:
    """Make `--model nemo_llm` known to lm-eval, which finds models only in its own registry (it has no plugin
    discovery). Lazy: the adapter, and torch with it, load when lm-eval first asks for the model."""
    try:
        # lm-eval adds its own models only while its registry is empty: let it go first.
        import lm_eval.models  # noqa: F401
        from lm_eval.api.registry import model_registry
    except ImportError:  # lm-eval is optional for everything else
        return
    if "nemo_llm" not in model_registry:  # already there on a reload
        model_registry.register("nemo_llm", target="nemo_llm.evaluation.lm_eval_adapter:NemoLLMLM")


_register_lm_eval_model()

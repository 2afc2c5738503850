"""lm-eval's own command line, with the model "nemo_llm" registered:

    python -m nemo_llm.evaluation.lm_eval_cli --model nemo_llm --model_args path=results/run --tasks hellaswag

(installed as `nemo-llm-lm-eval`). Every lm-eval option works; see docs/lm_eval.md.
"""

from __future__ import annotations

import sys

import nemo_llm  # noqa: F401 -- registers "nemo_llm" with lm-eval


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's CLI on argv (default: this process's arguments)."""
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        sys.exit("lm-eval is not installed: pip install 'lm-eval[hf]>=0.4.10'")
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]  # lm-eval's parser reads sys.argv itself
    cli_evaluate()


if __name__ == "__main__":
    main()

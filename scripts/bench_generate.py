"""Generation benchmark: decode throughput with and without the KV cache, and scoring throughput.

    python scripts/bench_generate.py             # the figures in docs/benchmarks.md (gpt_126m shape)
    python scripts/bench_generate.py --tiny      # seconds; what the test suite runs

A randomly initialised model of the given shape (weights do not change the cost) generates
--new-tokens greedy tokens after --prompt-tokens prompt tokens for --batch prompts, through
InferenceEngine as a user runs it: once with the KV cache, once recomputing the whole sequence
per token. Scoring runs InferenceEngine.score on --batch sequences of the model's context.
Tokens per second count generated (or scored) tokens. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_llm.inference import InferenceEngine, SamplingParams  # noqa: E402
from nemo_llm.models.gpt import GPTConfig, GPTModel  # noqa: E402

SHAPES = {
    # gpt_126m: 12 layers, hidden 768, 12 heads, context 2048
    "full": dict(num_layers=12, hidden_size=768, ffn_hidden_size=3072, num_attention_heads=12, vocab_size=50304,
                 max_position_embeddings=2048, prompt_tokens=128, new_tokens=64, batch=4),
    "tiny": dict(num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4, vocab_size=512,
                 max_position_embeddings=256, prompt_tokens=32, new_tokens=16, batch=2),
}


def build_engine(shape: dict, device: str, dtype: torch.dtype) -> InferenceEngine:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=shape["vocab_size"], max_position_embeddings=shape["max_position_embeddings"],
                       num_layers=shape["num_layers"], hidden_size=shape["hidden_size"],
                       ffn_hidden_size=shape["ffn_hidden_size"], num_attention_heads=shape["num_attention_heads"],
                       num_query_groups=shape["num_attention_heads"], hidden_dropout=0.0, attention_dropout=0.0)
    return InferenceEngine.from_model(GPTModel(config).to(device=device, dtype=dtype).eval())


def time_generation(engine: InferenceEngine, shape: dict, use_cache: bool) -> dict:
    prompts = torch.randint(0, shape["vocab_size"], (shape["batch"], shape["prompt_tokens"])).tolist()
    params = SamplingParams(max_new_tokens=shape["new_tokens"], greedy=True, stop_on_eod=False)
    engine.generate_ids(prompts, SamplingParams(max_new_tokens=2, greedy=True, stop_on_eod=False), use_cache)  # warm-up
    start = time.perf_counter()
    out = engine.generate_ids(prompts, params, use_cache)
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids in out)
    return {"kv_cache": use_cache, "generated_tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1), "ms_per_step": round(1000 * seconds / shape["new_tokens"], 2)}


def time_scoring(engine: InferenceEngine, shape: dict) -> dict:
    length = shape["max_position_embeddings"] + 1
    sequences = torch.randint(0, shape["vocab_size"], (shape["batch"], length)).tolist()
    engine.score(sequences[:1], batch_size=1)  # warm-up
    start = time.perf_counter()
    engine.score(sequences, batch_size=shape["batch"])
    seconds = time.perf_counter() - start
    tokens = shape["batch"] * (length - 1)
    return {"scored_tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model, for tests")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    shape = SHAPES["tiny" if args.tiny else "full"]
    engine = build_engine(shape, args.device, getattr(torch, args.dtype))
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "shape": shape,
        "generation": [time_generation(engine, shape, True), time_generation(engine, shape, False)],
        "scoring": time_scoring(engine, shape),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

"""Runs in each process of the multi-process inference tests (importable, so spawn can start it)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from nemo_llm.inference import InferenceEngine, SamplingParams
from nemo_llm.models.gpt import GPTConfig, GPTModel
from nemo_llm.parallel.state import destroy_model_parallel, initialize_model_parallel
from nemo_llm.tokenizers.byte import ByteTokenizer

PROMPTS = ["The cat", "A longer prompt than the others", "x", ""]
SEQUENCES = [[5, 9, 100, 3, 7, 250], [1, 2], [44] * 30, [7, 7, 7]]


def tiny_model(**overrides) -> GPTModel:
    torch.manual_seed(0)
    config = dict(vocab_size=384, max_position_embeddings=64, num_layers=4, hidden_size=64, ffn_hidden_size=128,
                  num_attention_heads=4, num_query_groups=2, position_embedding_type="rope", hidden_dropout=0.0,
                  attention_dropout=0.0)
    config.update(overrides)
    return GPTModel(GPTConfig(**config))


def run(tp: int, pp: int, model_overrides: dict) -> dict:
    """Greedy and sampled generations, streamed events and token scores at this layout."""
    state = None
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist.init_process_group("gloo")
        state = initialize_model_parallel(tp, pp)
    try:
        engine = InferenceEngine.from_model(tiny_model(**model_overrides), ByteTokenizer(), state)
        greedy = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, greedy=True))
        sampled = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, top_k=20, top_p=0.95, temperature=0.9,
                                                          repetition_penalty=1.2, seed=7, logprobs=True))
        scores = engine.score(SEQUENCES, batch_size=3)
        streamed = []
        if state is None or state.data_parallel_size == 1:
            streamed = [(e.index, e.token_id) for e in engine.stream(PROMPTS[:2], SamplingParams(max_new_tokens=6,
                                                                                                   greedy=True))]
        return {"greedy": [g.token_ids for g in greedy], "sampled": [g.token_ids for g in sampled],
                "sampled_logprobs": [g.logprobs for g in sampled],
                "scores": [s.logprobs for s in scores], "greedy_flags": [s.greedy for s in scores],
                "streamed": streamed}
    finally:
        if state is not None:
            destroy_model_parallel()
            dist.destroy_process_group()

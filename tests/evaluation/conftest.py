"""A tiny model that has learned four facts, and a fake engine whose log-probabilities are chosen."""

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from nemo_llm.inference import InferenceEngine, TokenScores
from nemo_llm.models.gpt import GPTConfig, GPTModel, gpt_loss
from nemo_llm.tokenizers import ByteTokenizer

TASK_DATA = Path(__file__).resolve().parents[1] / "data" / "eval_tasks"
FACTS = "grass is green. the sky is blue. snow is white. coal is black. "


class FakeEngine:
    """InferenceEngine's scoring interface over a rule: logprob(sequence, i) is the log-probability of
    sequence[i] given sequence[:i]. Records every sequence it scores."""

    def __init__(self, logprob: Callable[[Sequence[int], int], float], max_sequence_length: int = 64):
        self.logprob = logprob
        self.max_sequence_length = max_sequence_length
        self.tokenizer = ByteTokenizer()
        self.scored: list[list[int]] = []

    def score(self, sequences: Sequence[Sequence[int]], batch_size: int = 8) -> list[TokenScores]:
        for seq in sequences:
            assert 2 <= len(seq) <= self.max_sequence_length + 1
        self.scored += [list(seq) for seq in sequences]
        return [TokenScores([self.logprob(seq, i) for i in range(1, len(seq))], [True] * (len(seq) - 1))
                for seq in sequences]


@pytest.fixture(scope="session")
def facts_model() -> GPTModel:
    """A 2-layer byte-level GPT trained for 150 steps (~2 s) on FACTS repeated, until it knows them."""
    torch.manual_seed(0)
    tokenizer = ByteTokenizer()
    ids = torch.tensor([tokenizer.eod_id, *tokenizer.encode(FACTS * 8)])
    model = GPTModel(GPTConfig(vocab_size=257, max_position_embeddings=64, num_layers=2, hidden_size=64,
                               ffn_hidden_size=128, num_attention_heads=4, num_query_groups=4,
                               position_embedding_type="rope", hidden_dropout=0.0, attention_dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains no faster on more, and far slower on a busy machine
    try:
        for _ in range(150):
            starts = torch.randint(0, len(ids) - 65, (8,), generator=generator).tolist()
            tokens = torch.stack([ids[s:s + 64] for s in starts])
            labels = torch.stack([ids[s + 1:s + 65] for s in starts])
            loss = gpt_loss(model(tokens), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.3, f"the facts model did not learn its text (loss {loss.item():.3f})"
    return model.eval()


@pytest.fixture(scope="session")
def facts_engine(facts_model) -> InferenceEngine:
    return InferenceEngine.from_model(facts_model, ByteTokenizer())

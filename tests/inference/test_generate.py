import torch

from nemo_llm.inference import generate, sample_next_token
from nemo_llm.models.gpt import GPTConfig, GPTModel


def model():
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=50, max_position_embeddings=16, num_layers=1, hidden_size=16,
                              ffn_hidden_size=32, num_attention_heads=2, num_query_groups=2)).eval()


def test_greedy_picks_the_argmax_and_equals_top_k_1_and_tiny_top_p():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0]])
    assert sample_next_token(logits).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    assert sample_next_token(logits, "top_k", top_k=1, generator=g).tolist() == [1, 0]
    assert sample_next_token(logits, "top_p", top_p=1e-6, generator=g).tolist() == [1, 0]


def test_top_k_and_top_p_never_sample_outside_their_set():
    logits = torch.tensor([[4.0, 3.9, 0.0, -1.0, -2.0]])
    g = torch.Generator().manual_seed(0)
    drawn_k = {sample_next_token(logits, "top_k", top_k=2, generator=g).item() for _ in range(200)}
    assert drawn_k == {0, 1}
    # p(0) ~ 0.51, p(1) ~ 0.46: top_p=0.9 keeps exactly those two
    drawn_p = {sample_next_token(logits, "top_p", top_p=0.9, generator=g).item() for _ in range(200)}
    assert drawn_p == {0, 1}


def test_generate_extends_the_prompt_and_crops_the_context():
    m = model()
    prompt = torch.randint(0, 50, (2, 5))
    out = generate(m, prompt, max_new_tokens=20, max_context=16)
    assert out.shape == (2, 25) and out[:, :5].equal(prompt)
    again = generate(m, prompt, max_new_tokens=20, max_context=16)
    assert out.equal(again)  # greedy is deterministic


def test_generate_stops_at_end_of_document():
    m = model()
    prompt = torch.randint(0, 50, (1, 3))
    first = generate(m, prompt, max_new_tokens=1, max_context=16)[0, -1].item()
    out = generate(m, prompt, max_new_tokens=10, max_context=16, eod_id=first)
    assert out.shape == (1, 4)

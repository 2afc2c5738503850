import pytest
import torch

from nemo_llm.inference import GenerationTooLongError, InferenceEngine, SamplingParams, sample_next_token
from nemo_llm.inference.sampling import apply_repetition_penalty, filter_top_k_top_p
from nemo_llm.tokenizers.byte import ByteTokenizer
from tests.inference.parallel_worker import PROMPTS, tiny_model

LLAMA = dict(normalization="rmsnorm", activation="swiglu", bias=False, share_embeddings_and_output_weights=False)
GPT2 = dict(position_embedding_type="learned_absolute", num_query_groups=4)


def engine(**overrides) -> InferenceEngine:
    return InferenceEngine.from_model(tiny_model(**overrides).eval(), ByteTokenizer())


def test_greedy_picks_the_argmax_and_equals_top_k_1_and_tiny_top_p():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0]])
    assert sample_next_token(logits, SamplingParams(greedy=True)).tolist() == [1, 0]
    assert sample_next_token(logits, SamplingParams(top_k=1)).tolist() == [1, 0]
    assert sample_next_token(logits, SamplingParams(top_p=1e-6)).tolist() == [1, 0]


def test_top_k_and_top_p_never_sample_outside_their_set():
    logits = torch.tensor([[4.0, 3.9, 0.0, -1.0, -2.0]])
    g = [torch.Generator().manual_seed(0)]
    drawn_k = {sample_next_token(logits, SamplingParams(top_k=2), generators=g).item() for _ in range(200)}
    assert drawn_k == {0, 1}
    # p(0) ~ 0.51, p(1) ~ 0.46: top_p=0.9 keeps exactly those two
    drawn_p = {sample_next_token(logits, SamplingParams(top_p=0.9), generators=g).item() for _ in range(200)}
    assert drawn_p == {0, 1}
    both = filter_top_k_top_p(torch.tensor([[4.0, 3.9, 3.8, 0.0]]), top_k=3, top_p=0.5)
    assert torch.isfinite(both).tolist() == [[True, True, False, False]]


def test_temperature_sharpens_towards_the_argmax():
    logits = torch.tensor([[1.0, 0.5, 0.0]])
    g = [torch.Generator().manual_seed(0)]
    cold = [sample_next_token(logits, SamplingParams(temperature=0.05), generators=g).item() for _ in range(100)]
    hot = [sample_next_token(logits, SamplingParams(temperature=5.0), generators=g).item() for _ in range(100)]
    assert set(cold) == {0} and len(set(hot)) == 3


def test_repetition_penalty_lowers_every_seen_token():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    penalised = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert penalised.tolist() == [[1.0, -2.0, 0.5, 3.0]]  # positive halved, negative doubled, unseen kept
    # Greedy on a model that repeats itself: the penalty breaks the loop.
    plain = engine().generate(["aaaa"], SamplingParams(max_new_tokens=12, greedy=True))[0].token_ids
    penalised = engine().generate(["aaaa"], SamplingParams(max_new_tokens=12, greedy=True,
                                                           repetition_penalty=50.0))[0].token_ids
    assert len(set(penalised)) > len(set(plain)) and len(set(penalised)) == len(penalised)


@pytest.mark.parametrize("arch", [GPT2, LLAMA], ids=["gpt2", "llama"])
@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_kv_cache_generation_equals_recomputing_the_whole_sequence(arch, greedy):
    e = engine(**arch)
    params = SamplingParams(max_new_tokens=16, greedy=greedy, top_k=50, top_p=0.9, temperature=0.8,
                            repetition_penalty=1.1, seed=3, logprobs=True)
    cached = e.generate(PROMPTS, params)
    recomputed = e.generate(PROMPTS, params, use_cache=False)
    assert [g.token_ids for g in cached] == [g.token_ids for g in recomputed]
    for a, b in zip(cached, recomputed):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_a_prompt_gives_the_same_tokens_alone_or_in_a_batch_of_other_lengths():
    e = engine()
    params = SamplingParams(max_new_tokens=10, greedy=True, stop_on_eod=False)
    batch = e.generate(PROMPTS, params)
    assert [g.token_ids for g in batch] == [e.generate([p], params)[0].token_ids for p in PROMPTS]
    assert all(len(g.token_ids) == 10 and g.finish_reason == "length" for g in batch)


def test_sampling_is_reproducible_from_the_seed():
    e = engine()
    a = e.generate(PROMPTS, SamplingParams(max_new_tokens=8, seed=5))
    b = e.generate(PROMPTS, SamplingParams(max_new_tokens=8, seed=5))
    c = e.generate(PROMPTS, SamplingParams(max_new_tokens=8, seed=6))
    assert [g.token_ids for g in a] == [g.token_ids for g in b] != [g.token_ids for g in c]


def test_generated_tokens_stay_inside_the_tokenizer_vocabulary():
    # The tiny model has 384 output rows for the byte tokenizer's 257 ids: the rest is vocabulary padding.
    out = engine().generate(PROMPTS, SamplingParams(max_new_tokens=30, temperature=5.0, seed=1, stop_on_eod=False))
    assert max(t for g in out for t in g.token_ids) < 257


def test_generation_stops_at_end_of_document():
    e = engine()
    first = e.generate_ids([[65, 66]], SamplingParams(max_new_tokens=1, greedy=True, stop_on_eod=False))[0][0]

    class EodIsFirst(ByteTokenizer):
        eod_id = first

    e.tokenizer = EodIsFirst()
    g = e.generate(["AB"], SamplingParams(max_new_tokens=10, greedy=True))[0]
    assert g.token_ids == [first] and g.finish_reason == "eod" and g.text == ""


def test_stop_strings_cut_the_text_and_end_that_prompt_only():
    e = engine()
    params = SamplingParams(max_new_tokens=20, greedy=True)
    free = e.generate(PROMPTS[:2], params)
    stop = free[0].text[3:5]  # a string the first prompt will produce
    stopped = e.generate(PROMPTS[:2], SamplingParams(max_new_tokens=20, greedy=True, stop=[stop, "never seen"]))
    cut = free[0].text.index(stop)
    assert stopped[0].text == free[0].text[:cut] and stopped[0].finish_reason == "stop"
    assert stopped[0].token_ids == free[0].token_ids[:len(stopped[0].token_ids)]
    if stop not in free[1].text:
        assert stopped[1].text == free[1].text and stopped[1].finish_reason == "length"


def test_streamed_text_adds_up_to_the_generated_text_and_holds_back_a_possible_stop():
    e = engine()
    free = e.generate(PROMPTS[:2], SamplingParams(max_new_tokens=20, greedy=True))
    stop = free[0].text[6:9]
    params = SamplingParams(max_new_tokens=20, greedy=True, stop=[stop])
    final = e.generate(PROMPTS[:2], params)
    events = list(e.stream(PROMPTS[:2], params))
    for i in range(2):
        mine = [ev for ev in events if ev.index == i]
        assert "".join(ev.text for ev in mine) == final[i].text
        assert [ev.token_id for ev in mine] == final[i].token_ids
        assert [ev.finish_reason for ev in mine][-1] == final[i].finish_reason
        assert all(ev.finish_reason is None for ev in mine[:-1])
        # Nothing past the stop string ever reached the stream.
        assert all(stop not in "".join(ev.text for ev in mine[:k]) for k in range(len(mine) + 1))


def test_continuations_keep_the_space_a_tokenizer_folds_into_a_word():
    class WordPieces(ByteTokenizer):
        """Decodes like sentencepiece: a leading space of the first piece is dropped."""

        def decode(self, ids):
            return super().decode(ids).lstrip(" ")

    e = engine()
    e.tokenizer = WordPieces()
    plain = engine().generate(["Hello"], SamplingParams(max_new_tokens=8, greedy=True))[0].text
    assert e.generate(["Hello"], SamplingParams(max_new_tokens=8, greedy=True))[0].text == plain


def test_requests_that_do_not_fit_are_refused_with_the_numbers():
    e = engine()
    with pytest.raises(GenerationTooLongError, match="prompt 0 has 60 tokens; with max_new_tokens=5 that exceeds "
                                                     "the model's context of 64 tokens"):
        e.generate(["x" * 60], SamplingParams(max_new_tokens=5))
    with pytest.raises(ValueError, match="top_p=0 must be in"):
        e.generate(["x"], SamplingParams(top_p=0))
    with pytest.raises(ValueError, match="scoring needs 2 to 65"):
        e.score([[1]])


def test_zero_new_tokens_returns_empty_continuations():
    out = engine().generate(PROMPTS, SamplingParams(max_new_tokens=0))
    assert all(g.token_ids == [] and g.text == "" and g.finish_reason == "length" for g in out)


def test_scores_equal_the_log_softmax_of_the_full_forward():
    e = engine(**LLAMA)
    seqs = [[5, 9, 100, 3, 7], [1, 2], [44] * 30]
    scores = e.score(seqs, batch_size=2)
    for seq, s in zip(seqs, scores):
        logits = e.runner.part(torch.tensor([seq]))[0, :-1].log_softmax(-1)
        expected = logits.gather(-1, torch.tensor(seq[1:])[:, None]).squeeze(-1)
        assert s.logprobs == pytest.approx(expected.tolist(), abs=1e-5)
        assert s.greedy == (logits.argmax(-1) == torch.tensor(seq[1:])).tolist()

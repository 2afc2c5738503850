"""Log-likelihood requests and rolling windows against direct computation."""

import math

import pytest
import torch

from nemo_llm.evaluation.loglikelihood import encode_pair, loglikelihood, rolling_loglikelihood, rolling_windows
from nemo_llm.evaluation.perplexity import document_perplexity
from nemo_llm.tokenizers import ByteTokenizer
from tests.evaluation.conftest import FakeEngine

EOD = ByteTokenizer().eod_id


def model_logprobs(model, sequence: list[int]) -> list[float]:
    """log p(sequence[i] | sequence[:i]) for i >= 1, from one forward pass of the whole sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([sequence[:-1]]))[0].double()
    return logits.log_softmax(-1).gather(-1, torch.tensor(sequence[1:])[:, None]).squeeze(-1).tolist()


@pytest.mark.parametrize("num_tokens, window, stride", [(1, 4, 4), (10, 4, 4), (10, 4, 1), (10, 4, 3), (64, 64, 16),
                                                        (100, 7, 5), (3, 8, 2)])
def test_rolling_windows_score_every_token_exactly_once(num_tokens, window, stride):
    windows = rolling_windows(num_tokens, window, stride)
    targets = [t for _, end, first in windows for t in range(first, end + 1)]
    assert targets == list(range(1, num_tokens + 1))
    for start, end, first in windows:
        assert end - start <= window and start < first  # the model reads at most a window, before its targets
    # every target after the first window sees at least window - stride tokens before it
    later = [t - start for start, end, first in windows[1:] for t in range(first, end + 1)]
    assert all(context >= window - stride for context in later)


def test_smaller_stride_gives_more_context():
    def more_context_is_likelier(seq, i):  # the more tokens before a target, the likelier it is
        return -1.0 / i

    long_document = list(range(1, 41))
    disjoint = rolling_loglikelihood(FakeEngine(more_context_is_likelier, 8), [long_document], stride=8)[0]
    overlapping = rolling_loglikelihood(FakeEngine(more_context_is_likelier, 8), [long_document], stride=2)[0]
    assert overlapping > disjoint
    min_context = min(t - start for start, end, first in rolling_windows(40, 8, 2)[1:] for t in range(first, end + 1))
    assert min_context > min(t - start for start, end, first in rolling_windows(40, 8, 8)[1:]
                             for t in range(first, end + 1))


def test_rolling_sums_each_token_once_for_any_stride():
    def by_token(seq, i):  # a token's log-probability that does not depend on its context
        return -seq[i] / 100

    documents = [list(range(1, 30)), [5], list(range(50, 200))]
    for stride in (None, 1, 5, 16):
        totals = rolling_loglikelihood(FakeEngine(by_token, 16), documents, stride)
        assert totals == pytest.approx([-sum(d) / 100 for d in documents])


def test_a_document_that_fits_one_window_scores_as_one_sequence(facts_model, facts_engine):
    document = ByteTokenizer().encode("the sky is blue. snow is white.")
    [rolled] = rolling_loglikelihood(facts_engine, [document])
    [scored] = facts_engine.score([[EOD, *document]])
    assert rolled == pytest.approx(sum(scored.logprobs), abs=1e-9)
    assert rolled == pytest.approx(sum(model_logprobs(facts_model, [EOD, *document])), abs=1e-4)


def test_loglikelihood_is_the_continuation_s_log_probability_under_the_model(facts_model, facts_engine):
    tokenizer = ByteTokenizer()
    context, continuation = encode_pair(tokenizer, "grass is ", "green")
    assert (tokenizer.decode(context), tokenizer.decode(continuation)) == ("grass is", " green")  # the space moves
    [result] = loglikelihood(facts_engine, [(context, continuation)])
    expected = model_logprobs(facts_model, context + continuation)[-len(continuation):]
    assert result.logprob == pytest.approx(sum(expected), abs=1e-4)
    assert result.is_greedy and result.num_tokens == 6  # the model has learned this fact

    # a context longer than the model's window is cut from the left, as the model would have read it
    long_context = tokenizer.encode("snow is white. coal is black. " * 4 + "grass is")
    [cut] = loglikelihood(facts_engine, [(long_context, continuation)])
    window = (long_context + continuation)[-65:]
    assert cut.logprob == pytest.approx(sum(model_logprobs(facts_model, window)[-len(continuation):]), abs=1e-4)


def test_document_perplexity_per_token_word_and_byte():
    engine = FakeEngine(lambda seq, i: -math.log(4), 16)  # every token has probability 1/4
    result = document_perplexity(engine, ["ab cd", "", "efgh ijkl mn"], stride=None)
    assert result["documents"] == 2 and result["tokens"] == result["bytes"] == 17 and result["words"] == 5
    assert result["token_perplexity"] == pytest.approx(4.0)
    assert result["bits_per_byte"] == pytest.approx(2.0)  # log2(4) bits per one-byte token
    assert result["word_perplexity"] == pytest.approx(4.0 ** (17 / 5))

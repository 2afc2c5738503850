import pytest
import torch

from nemo_llm.models.gpt import IGNORE_INDEX, GPTConfig, GPTModel
from nemo_llm.prompt_learning.embedding import VirtualPromptEmbedding, wrap_embedding
from nemo_llm.prompt_learning.prompts import add_task
from nemo_llm.prompt_learning.templates import (PromptTokenizer, TaskTemplate, TemplateError, VirtualTokens,
                                                example_labels)
from nemo_llm.tokenizers.byte import ByteTokenizer

QA = "<|VIRTUAL_PROMPT_0|> Context: {context} Question: {question} <|VIRTUAL_PROMPT_1|> Answer: {answer}"


def tokenizer() -> PromptTokenizer:
    vocab = VirtualTokens(first_id=320)
    vocab.add(TaskTemplate("qa", QA, 5, [2, 3], truncation_field="context"))
    vocab.add(TaskTemplate("cls", "<|VIRTUAL_PROMPT_0|>{text}{label}", 4, answer_field="label"))
    return PromptTokenizer(ByteTokenizer(), vocab, default_task="qa")


def test_template_checks():
    with pytest.raises(TemplateError, match="virtual_token_splits"):
        TaskTemplate("t", QA, 6, [2, 3])
    with pytest.raises(TemplateError, match="answer_field"):
        TaskTemplate("t", "<|VIRTUAL_PROMPT_0|> {x}", 2)
    with pytest.raises(TemplateError, match="once each"):
        TaskTemplate("t", "{x} {answer}", 2)


def test_placeholders_encode_to_each_tasks_ids():
    tok = tokenizer()
    assert tok.encode("<|VIRTUAL_PROMPT_1|>hi") == [322, 323, 324, *b"hi"]  # qa, the default task
    assert tok.encode("<|cls:VIRTUAL_PROMPT_0|>x") == [325, 326, 327, 328, ord("x")]
    assert tok.decode(tok.encode("<|cls:VIRTUAL_PROMPT_0|>x y")) == "x y"
    assert tok.vocab_size == 257
    with pytest.raises(TemplateError, match="unknown task"):
        tok.encode("<|nope:VIRTUAL_PROMPT_0|>")


def test_example_answer_span_and_loss_mask():
    tok = tokenizer()
    record = {"context": "sky", "question": "colour?", "answer": "blue"}
    ids, start = tok.encode_example("qa", record, 200)
    assert ids[:2] == [320, 321] and ids[-1] == 256  # virtual tokens first, end-of-document last
    assert bytes(ids[start:-1]).decode() == " blue"  # the space before the answer belongs to it
    assert tok.decode(ids[:start]) == " Context: sky Question: colour?  Answer:"
    assert tok.prompt("qa", record) == ("<|qa:VIRTUAL_PROMPT_0|> Context: sky Question: colour? "
                                        "<|qa:VIRTUAL_PROMPT_1|> Answer:")
    assert tok.encode(tok.prompt("qa", record)) == ids[:start]
    tokens, labels = example_labels(ids, start, 320, answer_only_loss=True)
    assert tokens == ids[:-1]
    assert [x for x in labels if x != IGNORE_INDEX] == ids[start:]
    _, all_labels = example_labels(ids, start, 320, answer_only_loss=False)
    assert all(x == IGNORE_INDEX for x in all_labels if x >= 320) and IGNORE_INDEX in all_labels
    assert sum(x != IGNORE_INDEX for x in all_labels) == len(ids) - 1 - 4  # all but virtual targets


def test_truncation_field_is_shortened_to_fit():
    tok = tokenizer()
    record = {"context": "x" * 100, "question": "q?", "answer": "a"}
    ids, start = tok.encode_example("qa", record, 60)
    assert len(ids) == 60 and bytes(ids[start:-1]).decode() == " a"
    assert tok.encode_example("cls", {"text": "y" * 100, "label": "no"}, 60) is None  # no truncation_field


def test_embedding_substitutes_virtual_ids_and_keeps_names():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=320, max_position_embeddings=32, num_layers=1, hidden_size=16,
                               ffn_hidden_size=32, num_attention_heads=2, num_query_groups=2, hidden_dropout=0.0,
                               attention_dropout=0.0))
    names = set(model.state_dict())
    ids = torch.tensor([[5, 6, 7]])
    before = model(ids)
    add_task(model, TaskTemplate("t", "<|VIRTUAL_PROMPT_0|>{answer}", 2), "prompt-tuning", {}, seed=0)
    assert isinstance(model.embedding, VirtualPromptEmbedding) and wrap_embedding(model) is model.embedding
    assert names <= set(model.state_dict())  # base keys unchanged: base checkpoints load
    assert torch.equal(model(ids), before)  # ordinary ids: the base model unchanged
    with torch.no_grad():
        model.embedding.prompts["t"].weight[1] = model.embedding.word_embeddings.weight[6]
    assert torch.equal(model(torch.tensor([[5, 321, 7]])), before)  # virtual id 321 = its table row


@pytest.mark.parametrize("recipe, record, prompt", [
    ("squad", {"taskname": "squad", "context": "Owls hunt at night.", "question": "When?", "answer": "at night"},
     "Context: Owls hunt at night. Question: When? Answer:"),
    ("classification", {"taskname": "sentiment", "sentence": "a fine film", "label": "positive"},
     "a fine film  Sentiment:"),
])
def test_recipes_compose_and_their_templates_encode_a_record(recipe, record, prompt, tmp_path):
    from omegaconf import OmegaConf

    from nemo_llm.config import compose, validate

    cfg = compose([f"prompt_learning={recipe}", "stages=[prompt_learning]", f"run_dir={tmp_path}"])
    validate(cfg)
    vocab = VirtualTokens(first_id=320)
    for task in cfg.prompt_learning.task_templates:
        vocab.add(TaskTemplate(**OmegaConf.to_container(task)))
    tok = PromptTokenizer(ByteTokenizer(), vocab)
    text = tok.prompt(record["taskname"], record)
    assert text.replace(f"<|{record['taskname']}:VIRTUAL_PROMPT_0|>", "").replace(
        f"<|{record['taskname']}:VIRTUAL_PROMPT_1|>", "").strip() == prompt
    ids, answer_start = tok.encode_example(record["taskname"], record, 256)
    answer = record.get("answer", record.get("label"))
    assert ByteTokenizer().decode(ids[answer_start:-1]).strip() == answer

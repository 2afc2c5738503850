"""Each impossible config is refused with one line that names the key."""

import pytest

from nemo_llm.config import ConfigError, compose, validate
from nemo_llm.config.validation import parse_splits


def refused(overrides):
    with pytest.raises(ConfigError) as info:
        validate(compose(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("overrides, expected", [
    (["model.num_query_groups=3"], "model.num_attention_heads=4 is not divisible by model.num_query_groups=3"),
    (["model.encoder_seq_length=256"], "model.encoder_seq_length=256 is longer than model.max_position_embeddings=128"),
    (["model.hidden_size=130"], "model.hidden_size=130 is not divisible by model.num_attention_heads=4"),
    (["model.tensor_model_parallel_size=3", "trainer.devices=3"], "model.num_attention_heads=4 is not divisible by model.tensor_model_parallel_size=3"),
    (["model.tensor_model_parallel_size=2"], "world size trainer.num_nodes x trainer.devices = 1 is not a multiple"),
    (["model.global_batch_size=24"], "model.global_batch_size=24 is not divisible by model.micro_batch_size x data parallel size = 16 x 1"),
    (["model.pipeline_model_parallel_size=3", "trainer.devices=3"], "model.num_layers=4 is not divisible by pipeline stages"),
    (["model.tensor_model_parallel_size=2", "trainer.devices=2", "model.sequence_parallel=true",
      "model.encoder_seq_length=127"], "model.encoder_seq_length=127 is not divisible by model.tensor_model_parallel_size=2"),
    (["trainer.precision=16"], "trainer.precision=16 is not supported: use one of 32, bf16-mixed, 16-mixed"),
    (["model.activation=relu"], "model.activation=relu is not supported"),
    (["model.normalization=batchnorm"], "model.normalization=batchnorm is not supported"),
    (["model.position_embedding_type=alibi"], "model.position_embedding_type=alibi is not supported"),
    (["model.activations_checkpoint_granularity=selective", "model.activations_checkpoint_method=uniform"],
     "apply only to activations_checkpoint_granularity=full"),
    (["model.activations_checkpoint_granularity=full"], "model.activations_checkpoint_method=None is not supported"),
    (["model.activations_checkpoint_granularity=full", "model.activations_checkpoint_method=block",
      "model.activations_checkpoint_num_layers=9"], "model.activations_checkpoint_num_layers=9 must be between 1 and"),
    (["model.hidden_dropout=1.0"], "model.hidden_dropout=1.0 must be in [0, 1)"),
    (["model.data.splits_string=abc"], "model.data.splits_string='abc' must be three non-negative weights"),
    (["model.data.splits_string='0,50,50'"], "must be three non-negative weights"),
    (["model.tokenizer.library=tiktoken"], "model.tokenizer.library=tiktoken is not supported: use one of "
                                           "sentencepiece, huggingface, byte"),
    (["model.tokenizer.vocab_file=v.json", "model.tokenizer.merge_file=m.txt"],
     "model.tokenizer.vocab_file and merge_file are read only with model.tokenizer.library=huggingface"),
    (["model.tokenizer.library=huggingface", "model.tokenizer.vocab_file=v.json"],
     "model.tokenizer.vocab_file and model.tokenizer.merge_file go together"),
    (["model.tokenizer.library=huggingface", "model.tokenizer.model=null"],
     "model.tokenizer.library=huggingface needs model.tokenizer.model"),
    (["model.tokenizer.library=byte", "model.tokenizer.eod_token=x"],
     "model.tokenizer.eod_token=x does not apply to model.tokenizer.library=byte"),
    (["model.tokenizer.eod_token=''"], "model.tokenizer.eod_token is empty"),
    (["model.tokenizer.library=huggingface", "model.tokenizer.user_defined_symbols=[a]"],
     "model.tokenizer.user_defined_symbols apply to sentencepiece training only"),
    (["model.tokenizer.user_defined_symbols=[a,a]"], "model.tokenizer.user_defined_symbols=['a', 'a'] must be distinct"),
    (["model.optim.sched.min_lr=1.0"], "model.optim.sched.min_lr=1.0 must be between 0 and model.optim.lr"),
    (["model.optim.sched.warmup_steps=1000"], "exceeds trainer.max_steps=300"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 must be a positive integer"),
    (["model.micro_batch_size=0"], "model.micro_batch_size=0 must be a positive integer"),
    (["evaluation.generate.top_p=0"], "evaluation.generate.top_p=0.0 must be in (0, 1]"),
    (["evaluation.splits=[train]"], "evaluation.splits[]=train is not supported"),
    (["stages=[]"], "stages is empty"),
    (["model.pipeline_model_parallel_size=2", "trainer.devices=2"],
     "1F1B pipelining needs at least as many microbatches (1 = global batch / (micro x DP))"),
    (["model.pipeline_model_parallel_size=2", "trainer.devices=2", "model.virtual_pipeline_model_parallel_size=2",
      "model.pipeline_schedule=gpipe", "model.global_batch_size=32"], "runs interleaved 1F1B"),
    (["model.pipeline_model_parallel_size=2", "trainer.devices=2", "model.pipeline_model_parallel_layer_split=[3,3]",
      "model.global_batch_size=32"], "model.pipeline_model_parallel_layer_split=[3, 3] must list 2 stages"),
    (["model.tokenizer.model=null"], "model.tokenizer.model is empty"),
    (["data_preparation.workers=0"], "data_preparation.workers=0 must be at least 1"),
    (["data_preparation.shard_documents=0"], "data_preparation.shard_documents=0 must be null"),
    (["data_preparation.hf_dataset.path=x", "data_preparation.hf_dataset.streaming=true",
      "data_preparation.shard_documents=10"], "data_preparation.shard_documents needs an indexable dataset"),
    (["model.position_embedding_type=rope", "model.hidden_size=12", "model.num_attention_heads=4",
      "model.ffn_hidden_size=48"], "needs an even head dimension"),
])
def test_bad_overrides_are_refused(overrides, expected):
    assert expected in refused(overrides)


def test_valid_variants_pass():
    validate(compose(["model.num_query_groups=2", "model.position_embedding_type=rope", "model.normalization=rmsnorm",
                      "model.activation=swiglu", "model.bias=false",
                      "model.share_embeddings_and_output_weights=false"]))
    validate(compose(["model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2",
                      "trainer.devices=8", "model.global_batch_size=64", "model.sequence_parallel=true"]))
    validate(compose(["model.activations_checkpoint_granularity=full", "model.activations_checkpoint_method=uniform",
                      "model.activations_checkpoint_num_layers=2"]))
    validate(compose(["model.tokenizer.library=huggingface", "model.tokenizer.vocab_file=v.json",
                      "model.tokenizer.merge_file=m.txt", "model.tokenizer.eod_token=x"]))
    validate(compose(["model.tokenizer.user_defined_symbols=[a,b]", "model.tokenizer.byte_fallback=false"]))


def test_parse_splits():
    assert parse_splits("969,30,1") == pytest.approx([0.969, 0.03, 0.001])
    assert parse_splits("90/5/5") == pytest.approx([0.9, 0.05, 0.05])
    assert parse_splits("1") == pytest.approx([1.0, 0.0, 0.0])

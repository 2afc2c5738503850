"""Cross-key rules of the config, checked once before any work starts.

Each rule raises ConfigError with one line: the key, what is wrong, how to fix it. Types and
unknown keys are already refused by the schema when Hydra composes the config.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nemo_llm.data.blending import DataPrefixError, parse_data_prefix
from nemo_llm.errors import NemoLLMError
from nemo_llm.evaluation.tasks import TASK_NAMES

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
ACCELERATORS = ("auto", "cpu", "gpu")
NORMALIZATIONS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "swiglu")
POSITION_EMBEDDINGS = ("learned_absolute", "rope")
RECOMPUTE_GRANULARITIES = (None, "selective", "full")
RECOMPUTE_METHODS = ("uniform", "block")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")
FP8_RECIPES = (None, "torchao", "transformer_engine")
TOKENIZER_LIBRARIES = ("sentencepiece", "huggingface", "byte")
SENTENCEPIECE_MODEL_TYPES = ("bpe", "unigram")
EVAL_SPLITS = ("validation", "test")
PIPELINE_SCHEDULES = ("1f1b", "gpipe")
CONVERSION_DIRECTIONS = ("nemo_to_hf", "hf_to_nemo")


class ConfigError(NemoLLMError, ValueError):
    """A config that cannot run; str() is the one-line message for the user."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(value, allowed: tuple, key: str) -> None:
    shown = ", ".join("null" if a is None else str(a) for a in allowed)
    _require(value in allowed, f"{key}={value} is not supported: use one of {shown}")


def _positive(cfg: DictConfig, prefix: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        _require(cfg[key] >= 1, f"{prefix}.{key}={cfg[key]} must be a positive integer")


def parse_splits(splits_string: str) -> list[float]:
    """'969,30,1' -> [0.969, 0.03, 0.001] (train, validation, test fractions)."""
    try:
        parts = [float(p) for p in str(splits_string).replace("/", ",").split(",")]
    except ValueError:
        parts = []
    while 0 < len(parts) < 3:
        parts.append(0.0)
    _require(
        len(parts) == 3 and all(p >= 0 for p in parts) and parts[0] > 0,
        f"model.data.splits_string={splits_string!r} must be three non-negative weights "
        "'train,validation,test' with train > 0, e.g. '969,30,1'",
    )
    total = sum(parts)
    return [p / total for p in parts]


def data_parallel_size(cfg: DictConfig) -> int:
    """World size / (tensor x pipeline); validate() has checked that it divides."""
    m = cfg.model
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    return world // (m.tensor_model_parallel_size * m.pipeline_model_parallel_size)


def microbatch_count(global_batch_size: int, micro_batch_size: int, data_parallel_size: int) -> int:
    """Microbatches each data-parallel rank runs per optimizer step."""
    return global_batch_size // (micro_batch_size * data_parallel_size)


def validate_model(m: DictConfig) -> None:
    _positive(m, "model", ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                           "encoder_seq_length", "max_position_embeddings", "micro_batch_size",
                           "global_batch_size", "tensor_model_parallel_size",
                           "pipeline_model_parallel_size", "make_vocab_size_divisible_by"))
    heads, tp, pp = m.num_attention_heads, m.tensor_model_parallel_size, m.pipeline_model_parallel_size
    groups = m.num_query_groups if m.num_query_groups is not None else heads
    _require(m.hidden_size % heads == 0,
             f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads={heads}: "
             "choose a hidden size that is a multiple of the head count")
    _require(groups >= 1 and heads % groups == 0,
             f"model.num_attention_heads={heads} is not divisible by model.num_query_groups={groups}: "
             "each key/value group must serve the same number of query heads")
    _one_of(m.position_embedding_type, POSITION_EMBEDDINGS, "model.position_embedding_type")
    _require(m.position_embedding_type != "rope" or (m.hidden_size // heads) % 2 == 0,
             f"model.position_embedding_type=rope needs an even head dimension, "
             f"got hidden_size/num_attention_heads={m.hidden_size // heads}")
    _require(m.encoder_seq_length <= m.max_position_embeddings,
             f"model.encoder_seq_length={m.encoder_seq_length} is longer than "
             f"model.max_position_embeddings={m.max_position_embeddings}: raise max_position_embeddings "
             "or shorten the sequence")
    _one_of(m.normalization, NORMALIZATIONS, "model.normalization")
    _one_of(m.activation, ACTIVATIONS, "model.activation")
    for key in ("hidden_dropout", "attention_dropout"):
        _require(0.0 <= m[key] < 1.0, f"model.{key}={m[key]} must be in [0, 1)")
    _require(m.init_method_std > 0, f"model.init_method_std={m.init_method_std} must be positive")

    for what, size in (("num_attention_heads", heads), ("num_query_groups", groups),
                       ("ffn_hidden_size", m.ffn_hidden_size)):
        _require(size % tp == 0,
                 f"model.{what}={size} is not divisible by model.tensor_model_parallel_size={tp}: "
                 "each tensor-parallel rank must hold whole heads and an equal share of the MLP")
    if m.sequence_parallel:
        _require(m.encoder_seq_length % tp == 0,
                 f"model.encoder_seq_length={m.encoder_seq_length} is not divisible by "
                 f"model.tensor_model_parallel_size={tp}, which model.sequence_parallel=true needs")
    vp = m.virtual_pipeline_model_parallel_size
    if vp is not None:
        _require(vp >= 1, f"model.virtual_pipeline_model_parallel_size={vp} must be null or >= 1")
        _require(vp == 1 or pp > 1, "model.virtual_pipeline_model_parallel_size > 1 needs "
                                    "model.pipeline_model_parallel_size > 1")
    chunks = pp * (vp or 1)
    split = m.pipeline_model_parallel_layer_split
    if split is None:
        _require(m.num_layers % chunks == 0,
                 f"model.num_layers={m.num_layers} is not divisible by pipeline stages x virtual stages "
                 f"= {chunks}: change num_layers or the pipeline sizes, or set model.pipeline_model_parallel_layer_split")
    else:
        _require(len(split) == chunks and sum(split) == m.num_layers and min(split) >= 1,
                 f"model.pipeline_model_parallel_layer_split={list(split)} must list {chunks} stages of at least one "
                 f"layer each, summing to model.num_layers={m.num_layers}")
    _one_of(m.pipeline_schedule, PIPELINE_SCHEDULES, "model.pipeline_schedule")
    _require((vp or 1) == 1 or m.pipeline_schedule == "1f1b",
             "model.virtual_pipeline_model_parallel_size > 1 runs interleaved 1F1B: set model.pipeline_schedule=1f1b")

    granularity = m.activations_checkpoint_granularity
    _one_of(granularity, RECOMPUTE_GRANULARITIES, "model.activations_checkpoint_granularity")
    if granularity == "full":
        _one_of(m.activations_checkpoint_method, RECOMPUTE_METHODS, "model.activations_checkpoint_method")
        n = m.activations_checkpoint_num_layers
        _require(n is not None and 1 <= n <= m.num_layers // pp,
                 f"model.activations_checkpoint_num_layers={n} must be between 1 and the layers per "
                 f"pipeline stage ({m.num_layers // pp}) with activations_checkpoint_granularity=full")
    else:
        _require(m.activations_checkpoint_method is None and m.activations_checkpoint_num_layers is None,
                 "model.activations_checkpoint_method and activations_checkpoint_num_layers apply only to "
                 "activations_checkpoint_granularity=full: set them to null")

    validate_speed_options(m)
    validate_tokenizer(m.tokenizer)
    parse_splits(m.data.splits_string)
    prefix = m.data.data_prefix
    try:
        parse_data_prefix(OmegaConf.to_container(prefix) if OmegaConf.is_config(prefix) else prefix)
    except DataPrefixError as e:
        raise ConfigError(str(e)) from None

    opt = m.optim
    _one_of(opt.name, ("adamw",), "model.optim.name")
    _one_of(opt.sched.name, ("CosineAnnealing",), "model.optim.sched.name")
    _require(opt.lr > 0, f"model.optim.lr={opt.lr} must be positive")
    _require(0 <= opt.sched.min_lr <= opt.lr,
             f"model.optim.sched.min_lr={opt.sched.min_lr} must be between 0 and model.optim.lr={opt.lr}")
    _require(len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas),
             f"model.optim.betas={list(opt.betas)} must be two numbers in [0, 1)")
    _require(opt.sched.warmup_steps >= 0 and opt.sched.constant_steps >= 0,
             "model.optim.sched.warmup_steps and constant_steps must be >= 0")


def validate_speed_options(m: DictConfig) -> None:
    _one_of(m.torch_compile_mode, COMPILE_MODES, "model.torch_compile_mode")
    _require(m.torch_compile or m.torch_compile_mode is None,
             f"model.torch_compile_mode={m.torch_compile_mode} applies only with model.torch_compile=true")
    _one_of(m.attention_backend, ATTENTION_BACKENDS, "model.attention_backend")
    _positive(m, "model", ("cross_entropy_chunk_tokens",))
    if m.cross_entropy_loss_fusion:
        _require(m.tensor_model_parallel_size == 1,
                 "model.cross_entropy_loss_fusion=true needs tensor_model_parallel_size=1: with tensor parallelism "
                 "the loss is already computed on vocabulary shards; set it to false")
    _one_of(m.fp8, FP8_RECIPES, "model.fp8")
    if m.fp8 is not None:
        _require(m.tensor_model_parallel_size == 1,
                 f"model.fp8={m.fp8} needs tensor_model_parallel_size=1 (float8 linear layers are not "
                 "tensor-parallel here): set model.fp8=null or tensor_model_parallel_size=1")


def validate_tokenizer(tok: DictConfig) -> None:
    """Rules on model.tokenizer that need no file; whether the files exist is checked when it is built."""
    _one_of(tok.library, TOKENIZER_LIBRARIES, "model.tokenizer.library")
    _one_of(tok.model_type, SENTENCEPIECE_MODEL_TYPES, "model.tokenizer.model_type")
    _require(tok.library != "sentencepiece" or tok.model,
             "model.tokenizer.model is empty: name the sentencepiece .model file (data_preparation trains one "
             "there when it is missing), or use model.tokenizer.library=byte")
    _require(tok.vocab_size >= 2, f"model.tokenizer.vocab_size={tok.vocab_size} must be at least 2")
    # Keys another library would silently ignore are refused: the run would not use what was asked for.
    _require(tok.library == "huggingface" or not (tok.vocab_file or tok.merge_file),
             "model.tokenizer.vocab_file and merge_file are read only with model.tokenizer.library=huggingface: "
             "set the library, or set them to null")
    _require(bool(tok.vocab_file) == bool(tok.merge_file),
             "model.tokenizer.vocab_file and model.tokenizer.merge_file go together: set both (GPT-2 vocab.json "
             "and merges.txt), or neither and point model.tokenizer.model at a tokenizer.json")
    _require(tok.library != "huggingface" or tok.model or tok.vocab_file,
             "model.tokenizer.library=huggingface needs model.tokenizer.model (a tokenizer.json) or "
             "model.tokenizer.vocab_file and merge_file (GPT-2 vocab.json and merges.txt)")
    _require(tok.eod_token is None or tok.library != "byte",
             f"model.tokenizer.eod_token={tok.eod_token} does not apply to model.tokenizer.library=byte, whose "
             "end-of-document is always id 256: set it to null")
    _require(tok.eod_token != "", "model.tokenizer.eod_token is empty: name the end-of-document token, or set it "
                                  "to null for the library's default")
    symbols = list(tok.user_defined_symbols)
    _require(not symbols or tok.library == "sentencepiece",
             "model.tokenizer.user_defined_symbols apply to sentencepiece training only: set "
             "model.tokenizer.library=sentencepiece, or set them to []")
    _require(all(symbols) and len(set(symbols)) == len(symbols),
             f"model.tokenizer.user_defined_symbols={symbols} must be distinct non-empty strings")


def validate_trainer(cfg: DictConfig) -> None:
    t, m = cfg.trainer, cfg.model
    _one_of(str(t.precision), PRECISIONS, "trainer.precision")
    _one_of(t.accelerator, ACCELERATORS, "trainer.accelerator")
    _positive(t, "trainer", ("devices", "num_nodes", "max_steps", "val_check_interval", "log_every_n_steps"))
    _require(t.limit_val_batches >= 0, f"trainer.limit_val_batches={t.limit_val_batches} must be >= 0")
    _require(t.gradient_clip_val >= 0, f"trainer.gradient_clip_val={t.gradient_clip_val} must be >= 0 (0 disables)")
    _require(m.optim.sched.warmup_steps + m.optim.sched.constant_steps <= t.max_steps,
             f"model.optim.sched.warmup_steps + constant_steps = "
             f"{m.optim.sched.warmup_steps + m.optim.sched.constant_steps} exceeds trainer.max_steps={t.max_steps}")
    world = t.devices * t.num_nodes
    model_parallel = m.tensor_model_parallel_size * m.pipeline_model_parallel_size
    _require(world % model_parallel == 0,
             f"world size trainer.num_nodes x trainer.devices = {world} is not a multiple of "
             f"tensor x pipeline parallel size = {model_parallel}: change the device count or the layout")
    if "training" not in cfg.stages and "prompt_learning" not in cfg.stages:
        return  # the batch rules below are about training; evaluation and inference use their own batch_size
    dp = world // model_parallel
    _require(m.global_batch_size % (m.micro_batch_size * dp) == 0,
             f"model.global_batch_size={m.global_batch_size} is not divisible by model.micro_batch_size x "
             f"data parallel size = {m.micro_batch_size} x {dp}: pick a global batch that is a multiple of "
             f"{m.micro_batch_size * dp}")
    num_micro = microbatch_count(m.global_batch_size, m.micro_batch_size, dp)
    pp = m.pipeline_model_parallel_size
    if pp > 1 and m.pipeline_schedule == "1f1b":
        _require(num_micro >= pp,
                 f"1F1B pipelining needs at least as many microbatches ({num_micro} = global batch / (micro x DP)) "
                 f"as model.pipeline_model_parallel_size={pp}: raise model.global_batch_size")
    if (m.virtual_pipeline_model_parallel_size or 1) > 1:
        _require(num_micro % pp == 0,
                 f"interleaved pipelining needs the number of microbatches ({num_micro} = global batch / (micro x "
                 f"DP)) to be a multiple of model.pipeline_model_parallel_size={pp}: change model.global_batch_size")


def validate_sampling(g: DictConfig, key: str) -> None:
    _require(g.max_new_tokens >= 0, f"{key}.max_new_tokens={g.max_new_tokens} must be >= 0")
    _require(g.greedy or g.temperature > 0, f"{key}.temperature={g.temperature} must be positive (or set {key}.greedy=true)")
    _require(g.top_k >= 0, f"{key}.top_k={g.top_k} must be >= 0 (0 keeps every token)")
    _require(0 < g.top_p <= 1, f"{key}.top_p={g.top_p} must be in (0, 1]")
    _require(g.repetition_penalty > 0, f"{key}.repetition_penalty={g.repetition_penalty} must be positive (1.0 is off)")
    _require(all(bool(s) for s in g.stop), f"{key}.stop holds an empty string: list the strings that end generation")


def validate_evaluation(e: DictConfig) -> None:
    for split in e.splits:
        _one_of(split, EVAL_SPLITS, "evaluation.splits[]")
    _require(e.max_batches >= 0, f"evaluation.max_batches={e.max_batches} must be >= 0 (0 = whole split)")
    _require(e.batch_size >= 1, f"evaluation.batch_size={e.batch_size} must be >= 1")
    _require(e.num_fewshot >= 0, f"evaluation.num_fewshot={e.num_fewshot} must be >= 0")
    _require(e.limit >= 0, f"evaluation.limit={e.limit} must be >= 0 (0 = every example)")
    _require(e.perplexity.stride is None or e.perplexity.stride >= 1,
             f"evaluation.perplexity.stride={e.perplexity.stride} must be null (the model's context) or >= 1")
    _require(e.perplexity.max_documents >= 0,
             f"evaluation.perplexity.max_documents={e.perplexity.max_documents} must be >= 0 (0 = all)")
    _require(bool(e.perplexity.json_key),
             "evaluation.perplexity.json_key is empty: name the field that holds each document's text")
    for task in e.tasks:
        _one_of(task, TASK_NAMES, "evaluation.tasks[]")
    repeated = sorted({task for task in e.tasks if list(e.tasks).count(task) > 1})
    _require(not repeated, f"evaluation.tasks lists {', '.join(repeated)} more than once: list each task once")
    validate_sampling(e.generate, "evaluation.generate")


def validate_inference(i: DictConfig) -> None:
    validate_sampling(i.sampling, "inference.sampling")
    _require(i.batch_size >= 1, f"inference.batch_size={i.batch_size} must be >= 1")
    s = i.server
    _require(0 <= s.port <= 65535, f"inference.server.port={s.port} must be a TCP port (0-65535; 0 picks a free one)")
    _require(s.max_prompts >= 1, f"inference.server.max_prompts={s.max_prompts} must be >= 1")
    _require(s.max_new_tokens >= 1, f"inference.server.max_new_tokens={s.max_new_tokens} must be >= 1")
    _require(s.max_request_bytes >= 1024, f"inference.server.max_request_bytes={s.max_request_bytes} must be >= 1024")
    _require(i.sampling.max_new_tokens <= s.max_new_tokens,
             f"inference.sampling.max_new_tokens={i.sampling.max_new_tokens} is above inference.server.max_new_tokens="
             f"{s.max_new_tokens}, the most a request may ask for: lower the first or raise the second")
    _require(0 <= i.sampling.seed < 2**32, f"inference.sampling.seed={i.sampling.seed} must be in [0, 2^32)")
    _require(bool(s.host), "inference.server.host is empty: use 127.0.0.1 (this machine) or 0.0.0.0 (every network)")


def validate_data_preparation(d: DictConfig) -> None:
    _require(d.workers >= 1, f"data_preparation.workers={d.workers} must be at least 1")
    _require(d.shard_documents is None or d.shard_documents >= 1,
             f"data_preparation.shard_documents={d.shard_documents} must be null (one shard per input file) or >= 1")
    _require(bool(d.json_key), "data_preparation.json_key is empty: name the field that holds each document's text")
    _require(not (d.hf_dataset.streaming and d.shard_documents),
             "data_preparation.shard_documents needs an indexable dataset: set it to null with "
             "data_preparation.hf_dataset.streaming=true (each stream shard is one work shard)")


def validate_conversion(c: DictConfig, stages: list[str]) -> None:
    _one_of(c.direction, CONVERSION_DIRECTIONS, "conversion.direction")
    if "conversion" not in stages:
        return
    _require(c.direction != "hf_to_nemo" or bool(c.input),
             "conversion.input is empty: conversion.direction=hf_to_nemo needs the Hugging Face folder to import")
    _require(not (c.input and c.output) or Path(c.input).resolve() != Path(c.output).resolve(),
             f"conversion.output={c.output} is conversion.input itself: choose another output folder")


PROMPT_STYLES = ("p-tuning", "prompt-tuning")
PROMPT_ENCODERS = ("mlp", "lstm")


def validate_prompt_learning(cfg: DictConfig) -> None:
    """Only when the prompt_learning stage runs: its tasks, templates and batch sizes."""
    if "prompt_learning" not in cfg.stages:
        return
    p = cfg.prompt_learning
    _one_of(p.virtual_prompt_style, PROMPT_STYLES, "prompt_learning.virtual_prompt_style")
    _one_of(p.p_tuning.encoder_type, PROMPT_ENCODERS, "prompt_learning.p_tuning.encoder_type")
    _positive(p.p_tuning, "prompt_learning.p_tuning", ("encoder_hidden", "num_layers"))
    _require(p.p_tuning.encoder_type == "lstm" or p.p_tuning.num_layers >= 1,
             "prompt_learning.p_tuning.num_layers must be at least 1")
    _require(len(p.new_tasks) > 0, "prompt_learning.new_tasks is empty: name the task_templates to learn, "
                                   "e.g. prompt_learning.new_tasks=[squad]")
    names = [t.taskname for t in p.task_templates]
    for name in list(p.new_tasks) + list(p.existing_tasks):
        _require(name in names or name in p.existing_tasks,
                 f"prompt_learning.new_tasks: {name} has no entry in prompt_learning.task_templates")
        _require("." not in name and ":" not in name, f"prompt_learning task {name}: tasknames cannot hold '.' or ':'")
    overlap = set(p.new_tasks) & set(p.existing_tasks)
    _require(not overlap, f"prompt_learning: {', '.join(sorted(overlap))} in both existing_tasks and new_tasks: "
                          "an existing task is kept as it is, list it once")
    _require(not p.existing_tasks or p.restore_path is not None,
             "prompt_learning.existing_tasks needs prompt_learning.restore_path (the prompts.pt that holds them)")
    _require(p.data.train_ds is not None, "prompt_learning.data.train_ds is not set: give a jsonl file of records")
    _positive(p, "prompt_learning", ("micro_batch_size", "global_batch_size", "max_steps", "val_check_interval"))
    dp = data_parallel_size(cfg)
    _require(p.global_batch_size % (p.micro_batch_size * dp) == 0,
             f"prompt_learning.global_batch_size={p.global_batch_size} is not a multiple of micro_batch_size x "
             f"data-parallel size ({p.micro_batch_size} x {dp})")
    for task in p.task_templates:
        splits = task.virtual_token_splits
        _require(splits is None or sum(splits) == task.total_virtual_tokens,
                 f"prompt_learning.task_templates ({task.taskname}): virtual_token_splits {list(splits or [])} must "
                 f"sum to total_virtual_tokens={task.total_virtual_tokens}")


CLUSTERS = ("local", "slurm", "interactive")
DATA_PARTS = ("all", "tokenizer", "shards")


def validate_cluster(cfg: DictConfig) -> None:
    c = cfg.cluster
    _one_of(c.type, CLUSTERS, "cluster.type")
    _one_of(cfg.data_preparation.part, DATA_PARTS, "data_preparation.part")
    _require(c.data_preparation_array >= 1, f"cluster.data_preparation_array={c.data_preparation_array} must be at "
                                            "least 1 (1: one job)")
    _require(c.preempt_signal_seconds > 0, "cluster.preempt_signal_seconds must be positive")
    if c.type == "local":
        _require(c.data_preparation_array == 1, "cluster.data_preparation_array needs cluster=slurm (a job array)")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key that makes cfg impossible to run."""
    _require(len(cfg.stages) > 0, "stages is empty: list at least one stage, e.g. stages=[training]")
    validate_model(cfg.model)
    validate_trainer(cfg)
    validate_evaluation(cfg.evaluation)
    validate_inference(cfg.inference)
    validate_data_preparation(cfg.data_preparation)
    validate_conversion(cfg.conversion, list(cfg.stages))
    validate_prompt_learning(cfg)
    validate_cluster(cfg)

"""The typed tree behind conf/: every key a user can set, its type and its default.

Hydra merges conf/*.yaml and command-line overrides onto this schema, so a misspelt key or a
value of the wrong type is refused before any work starts. Cross-key rules (heads divisible by
query groups, batch sizes that divide, ...) live in nemo_llm.config.validation. Names follow
NeMo/Megatron (tensor_model_parallel_size, encoder_seq_length, activations_checkpoint_*).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


@dataclass
class TokenizerConfig:
    # sentencepiece: `model` is a .model file; data_preparation trains it on the corpus when missing.
    # huggingface: a byte-level BPE (GPT-2) read with the `tokenizers` library, never trained here:
    #   `model` is a tokenizer.json, or vocab_file + merge_file (which take precedence when set).
    # byte: UTF-8 bytes plus end-of-document, needs no file (the fallback when nothing is trained).
    library: str = "sentencepiece"
    model: Optional[str] = None
    vocab_file: Optional[str] = None  # huggingface: GPT-2 vocab.json, as Megatron's --vocab-file
    merge_file: Optional[str] = None  # huggingface: GPT-2 merges.txt, as Megatron's --merge-file
    # The token data preparation appends to every document; it must be in the vocabulary.
    # null: <|endoftext|> for huggingface, <eod> (else the model's EOS) for sentencepiece; byte has id 256.
    eod_token: Optional[str] = None
    # sentencepiece: size to train; byte: fixed at 257; huggingface: the files decide, but the printed
    # plan counts parameters with this value, so set it to match
    vocab_size: int = 4096
    model_type: str = "bpe"  # sentencepiece training: bpe | unigram
    input_sentence_size: int = 1_000_000  # sentences sampled from the corpus for training
    character_coverage: float = 0.9995
    # sentencepiece training: characters outside the vocabulary become UTF-8 byte pieces, not <unk>
    byte_fallback: bool = True
    # sentencepiece training: special tokens that are always one piece, ids right after <eod>
    user_defined_symbols: List[str] = field(default_factory=list)


@dataclass
class DataConfig:
    # Path prefix of <prefix>.bin/.idx (Megatron indexed dataset), or a blend of several corpora in
    # fixed proportions: [weight1, prefix1, weight2, prefix2, ...]
    data_prefix: Any = None
    splits_string: str = "969,30,1"  # train, validation, test document ratios
    num_workers: int = 0
    # where the GPT sample indices (.npy) are cached; null: next to each corpus's .bin/.idx
    index_mapping_dir: Optional[str] = None


@dataclass
class SchedConfig:
    name: str = "CosineAnnealing"  # linear warmup to lr, cosine decay to min_lr at trainer.max_steps
    warmup_steps: int = 0
    constant_steps: int = 0  # steps held at min_lr at the end
    min_lr: float = 0.0


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 6e-4
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    sched: SchedConfig = field(default_factory=SchedConfig)


@dataclass
class ModelConfig:
    # Presets in conf/model/ fill the required (MISSING) keys.
    name: str = MISSING
    # Architecture
    num_layers: int = MISSING
    hidden_size: int = MISSING
    ffn_hidden_size: int = MISSING
    num_attention_heads: int = MISSING
    num_query_groups: Optional[int] = None  # null: one key/value head per query head (MHA)
    encoder_seq_length: int = MISSING
    max_position_embeddings: int = MISSING
    position_embedding_type: str = "learned_absolute"  # learned_absolute | rope
    rotary_base: float = 10000.0
    normalization: str = "layernorm"  # layernorm | rmsnorm
    layernorm_epsilon: float = 1e-5
    activation: str = "gelu"  # gelu | swiglu
    bias: bool = True
    share_embeddings_and_output_weights: bool = True
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    init_method_std: float = 0.02
    make_vocab_size_divisible_by: int = 128
    # Parallel layout: data parallel size = world size / (tensor x pipeline)
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    sequence_parallel: bool = False
    pipeline_schedule: str = "1f1b"  # 1f1b | gpipe; interleaved 1F1B when virtual_pipeline_model_parallel_size > 1
    pipeline_model_parallel_layer_split: Optional[List[int]] = None  # layers per stage; null: equal shares
    # true: FSDP2 over data-parallel ranks shards optimizer states, gradients and parameters;
    # false: parameters replicated, gradients all-reduced
    use_distributed_optimizer: bool = False
    # Batch: global = micro x data-parallel size x gradient-accumulation steps
    micro_batch_size: int = MISSING
    global_batch_size: int = MISSING
    # Recompute (Megatron semantics): granularity null | selective | full;
    # for full, method uniform (checkpoint groups of num_layers) | block (first num_layers per stage)
    activations_checkpoint_granularity: Optional[str] = None
    activations_checkpoint_method: Optional[str] = None
    activations_checkpoint_num_layers: Optional[int] = None
    # Speed (docs/benchmarks.md#levers-prediction-and-outcome measures each). torch.compile of every transformer layer;
    # torch_compile_mode null (inductor's default) | reduce-overhead (CUDA graphs) | max-autotune
    torch_compile: bool = False
    torch_compile_mode: Optional[str] = None
    # SDPA kernel: auto (PyTorch picks) | flash | cudnn | efficient | math; cudnn and efficient need a GPU
    attention_backend: str = "auto"
    # Output layer + cross-entropy in chunks of this many tokens, never holding the [tokens, vocab] logits;
    # needs tensor parallel size 1 (under TP the loss is already vocabulary-parallel)
    cross_entropy_loss_fusion: bool = False
    cross_entropy_chunk_tokens: int = 4096
    # float8 matmuls in the transformer layers' linear layers: null | torchao | transformer_engine
    # (each an optional package; GPUs with fp8 tensor cores, H100 and later, gain from it)
    fp8: Optional[str] = None
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # processes (GPUs) per node
    num_nodes: int = 1
    precision: str = "32"  # 32 | bf16-mixed | 16-mixed (fp16 with dynamic loss scaling)
    max_steps: int = 100
    val_check_interval: int = 50  # optimizer steps between validations
    limit_val_batches: int = 10  # global batches per validation
    log_every_n_steps: int = 1
    gradient_clip_val: float = 1.0  # 0 disables clipping
    peak_tflops_per_device: Optional[float] = None  # MFU denominator; null: known GPU peak or measured CPU matmul


@dataclass
class HFDatasetConfig:
    # datasets.load_dataset(path, name, split=..., data_files=..., streaming=...): a hub name, a local
    # folder of data files or a loading script; a folder written by save_to_disk is loaded from disk
    path: Optional[str] = None
    name: Optional[str] = None
    split: str = "train"
    data_files: Any = None
    streaming: bool = False  # read without a local copy; each of its shards becomes one work shard
    cache_dir: Optional[str] = None  # null: the datasets library's default cache


@dataclass
class DownloadConfig:
    # Files fetched before preprocessing (http(s):// or file://), resumable; skipped when present
    urls: List[str] = field(default_factory=list)
    url_template: Optional[str] = None  # e.g. https://host/train/{file:02d}.jsonl.zst, one URL per file number
    file_numbers: Optional[str] = None  # "0-29" or "0,3,5-7"
    dir: str = "${data_preparation.output_dir}/raw"
    extract: bool = True  # decompress .zst/.gz downloads next to themselves


@dataclass
class DataPreparationConfig:
    # path, glob, directory or list of them: .jsonl/.json (one document per line), .parquet (one per
    # row), anything else one document per file; each may be .gz or .zst compressed.
    # null and no hf_dataset.path: the embedded corpus
    input: Any = None
    hf_dataset: HFDatasetConfig = field(default_factory=HFDatasetConfig)
    json_key: str = "text"  # jsonl field, parquet column or HF dataset column that holds the document
    download: DownloadConfig = field(default_factory=DownloadConfig)
    output_dir: str = "${run_dir}/data"
    output_prefix: str = "corpus"  # writes <output_dir>/<output_prefix>_text_document.{bin,idx}
    append_eod: bool = True
    workers: int = 1  # tokenizer processes
    # all | tokenizer (download, train the tokenizer, stop) | shards (tokenize this Slurm array task's
    # share of the shards, no merge): the parts cluster.data_preparation_array runs as separate jobs
    part: str = "all"
    # documents per shard (the unit of work and of resume); null: one shard per input file
    shard_documents: Optional[int] = None


@dataclass
class CheckpointConfig:
    # Directories under <run_dir>/checkpoints/ (sharded, loadable at any layout): step<N>.ckpt every
    # every_n_train_steps steps, the newest save_last_k kept; best-*.ckpt by val_loss; last.ckpt at the end
    every_n_train_steps: int = 50
    save_last_k: int = 2
    save_top_k: int = 1  # best checkpoints by val_loss; 0 keeps none
    async_save: bool = False  # write in a background thread from copies while training continues


@dataclass
class TrainingConfig:
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tensorboard: bool = True
    progress_bar: bool = True
    # NaN/inf gradients skip the step; this many in a row stop training (0: never stop)
    max_consecutive_bad_steps: int = 10


@dataclass
class SamplingConfig:
    # nemo_llm.inference.SamplingParams: the REST server's JSON fields have the same names
    max_new_tokens: int = 48
    greedy: bool = False  # argmax; temperature, top_k and top_p are then ignored
    temperature: float = 1.0
    top_k: int = 0  # 0 keeps every token
    top_p: float = 1.0  # 1.0 keeps every token
    repetition_penalty: float = 1.0  # > 1 penalises tokens already in the prompt or output (1.0: off)
    stop: List[str] = field(default_factory=list)  # generation ends before the first of these strings
    stop_on_eod: bool = True
    seed: int = 1234
    logprobs: bool = False


@dataclass
class GenerateConfig(SamplingConfig):
    prompt: str = "The"


@dataclass
class PerplexityConfig:
    # Rolling-window perplexity on documents of any length: files as data_preparation.input takes
    # them (.jsonl/.parquet/text, globs, .gz/.zst); null skips it
    input: Any = None
    json_key: str = "text"
    # tokens each window moves on; null: the model's context (disjoint windows); smaller strides give
    # every token at least (context - stride) tokens of context, at more compute
    stride: Optional[int] = None
    max_documents: int = 0  # 0: all


@dataclass
class PromptTasksConfig:
    # jsonl records with a "taskname" and the template's fields; answers checked against the answer
    # field (or an "answers" list, as SQuAD records carry)
    data: Optional[str] = "${prompt_learning.data.validation_ds}"
    limit: int = 0  # records per task; 0: all
    max_new_tokens: int = 32


@dataclass
class EvaluationConfig:
    # null: the training stage's last checkpoint in run_dir; else anything nemo_llm.load accepts
    checkpoint: Optional[str] = None
    # Perplexity on held-out splits of the training corpus (model.data); [] skips it
    splits: List[str] = field(default_factory=lambda: ["validation", "test"])
    max_batches: int = 20  # micro-batches per split; 0 = whole split
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    # Benchmarks: lambada, race_h, boolq, piqa, hellaswag, winogrande, anli_r1, anli_r2, anli_r3, hans, wic
    tasks: List[str] = field(default_factory=list)
    num_fewshot: int = 0  # examples with their answers before each question
    fewshot_seed: int = 1234  # which examples are drawn as shots
    limit: int = 0  # examples per task; 0: all
    # Local copies of the tasks' data, read before the Hugging Face hub is tried:
    # <data_dir>/<task>/<split>.jsonl, one record per line in the hub dataset's schema
    data_dir: Optional[str] = None
    batch_size: int = 8  # sequences per forward pass
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    # Learned prompts (prompt_learning's prompt_table.pt or prompts.pt): the model runs with them and
    # their tasks are scored on prompt_tasks.data; checkpoint null then means the base they name
    prompt_table: Optional[str] = None
    prompt_tasks: PromptTasksConfig = field(default_factory=PromptTasksConfig)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # loopback; 0.0.0.0 serves other machines too (no authentication: trusted networks)
    port: int = 5000  # 0: any free port (printed at start)
    max_prompts: int = 32  # per request
    max_new_tokens: int = 1024  # the most a request may ask for
    max_request_bytes: int = 1_000_000


@dataclass
class InferenceConfig:
    # null: the training stage's last checkpoint in run_dir; else anything nemo_llm.load accepts
    checkpoint: Optional[str] = None
    prompts: List[str] = field(default_factory=list)
    prompts_file: Optional[str] = None  # .jsonl with a "prompt" field per line, or text with one prompt per line
    output_file: str = "${run_dir}/generations.jsonl"
    batch_size: int = 8  # prompts generated together
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    serve: bool = False  # run the REST server (until interrupted) instead of generating for prompts
    server: ServerConfig = field(default_factory=ServerConfig)
    # Learned prompts (prompt_table.pt or prompts.pt): prompts may then hold <|task:VIRTUAL_PROMPT_n|>;
    # checkpoint null then means the base they name
    prompt_table: Optional[str] = None
    default_task: Optional[str] = None  # the task of placeholders written without a task name


@dataclass
class ConversionConfig:
    # Not in the default stages: stages=[conversion], or append it to export what training wrote.
    direction: str = "nemo_to_hf"  # nemo_to_hf | hf_to_nemo
    # nemo_to_hf: a .ckpt, checkpoint directory, import output or run directory; null: this run's
    #   checkpoints/last.ckpt. hf_to_nemo: a Hugging Face GPT-2 or Llama folder (required).
    input: Optional[str] = None
    output: Optional[str] = None  # null: <run_dir>/hf (nemo_to_hf) or <run_dir>/nemo (hf_to_nemo)


@dataclass
class PromptTaskConfig:
    taskname: str = MISSING  # records of this task carry "taskname": <taskname>
    # <|VIRTUAL_PROMPT_n|> placeholders, {field}s of the record and text; the answer field comes last
    prompt_template: str = MISSING
    total_virtual_tokens: int = 10
    virtual_token_splits: Optional[List[int]] = None  # tokens per placeholder; null: all in placeholder 0
    answer_field: str = "answer"
    answer_only_loss: bool = True  # false: loss on every real token of the example
    truncation_field: Optional[str] = None  # shortened when an example exceeds max_seq_length


@dataclass
class PTuningConfig:
    encoder_type: str = "mlp"  # mlp | lstm (bidirectional, with an MLP head)
    encoder_hidden: int = 256
    num_layers: int = 2
    dropout: float = 0.0


@dataclass
class SquadSourceConfig:
    dataset: str = "squad"  # Hugging Face dataset id, for a split whose file below is null
    train_file: Optional[str] = None  # a local SQuAD .json (v1.1/v2.0) or .jsonl in the hub's columns
    validation_file: Optional[str] = None
    taskname: str = "squad"


@dataclass
class PromptDataConfig:
    # jsonl files, one record per line with a "taskname" field and the template's fields
    train_ds: Optional[str] = None
    validation_ds: Optional[str] = None  # also scored for task accuracy after training
    # SQuAD converted into train_ds / validation_ds when those files do not exist yet; null: no conversion
    squad: Optional[SquadSourceConfig] = None


@dataclass
class PromptLearningConfig:
    virtual_prompt_style: str = "p-tuning"  # p-tuning | prompt-tuning
    # the frozen base checkpoint; null: this run's checkpoints/last.ckpt
    language_model_path: Optional[str] = None
    # a prompts.pt of an earlier run whose tasks (existing_tasks) are kept, frozen, next to new_tasks
    restore_path: Optional[str] = None
    existing_tasks: List[str] = field(default_factory=list)
    new_tasks: List[str] = field(default_factory=list)  # tasknames of task_templates learned in this run
    task_templates: List[PromptTaskConfig] = field(default_factory=list)
    p_tuning: PTuningConfig = field(default_factory=PTuningConfig)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    output_dir: str = "${run_dir}/prompt_learning"
    max_seq_length: Optional[int] = None  # tokens per example; null: the base's max_position_embeddings
    micro_batch_size: int = 4
    global_batch_size: int = 8
    max_steps: int = 100
    val_check_interval: int = 50
    limit_val_batches: int = 10
    eval_limit: int = 0  # validation records scored for accuracy after training; 0: all
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.01))


@dataclass
class AutoConfigSearchConfig:
    # Values tried; null: every value that divides (tensor: 1, 2, 4, 8 within a node; pipeline: divisors of the layers)
    tensor_parallel: Optional[List[int]] = None
    pipeline_parallel: Optional[List[int]] = None
    virtual_pipeline: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 6, 8, 12])
    micro_batch_size: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    recompute: List[str] = field(default_factory=lambda: ["none", "selective", "full"])
    sequence_parallel: List[bool] = field(default_factory=lambda: [False, True])


@dataclass
class AutoConfigMeasureConfig:
    top_k: int = 0  # run the k best training layouts for `steps` steps through the training stage (0: estimate only)
    steps: int = 6
    timeout_s: int = 900  # per run


@dataclass
class AutoConfigInferenceConfig:
    input_length: int = 512
    output_length: int = 128
    batch_sizes: List[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128])
    max_latency_s: Optional[float] = None  # per request (prefill + every output token)
    measure_top_k: int = 0  # time the k best layouts that fit this machine with the generation engine


@dataclass
class AutoConfiguratorConfig:
    mode: str = "training"  # training | inference | both
    gpu: str = "a100_80gb"  # a100_40gb | a100_80gb | h100_80gb | h200_141gb
    num_gpus: int = 8
    tokens: float = 300e9  # training tokens, for days_to_train
    precision: str = "bf16-mixed"
    tflops_per_gpu: Optional[float] = None  # achieved TFLOP/s per GPU (with recompute): replaces the efficiency model
    max_days: Optional[float] = None  # also report the largest model num_gpus can train on `tokens` in this many days
    memory_model: str = "nemo_llm"  # nemo_llm (this engine's bytes per parameter) | megatron (Megatron-LM's)
    memory_fraction: float = 0.9  # share of the GPU memory a layout may use
    dp_overlap: float = 0.5  # share of the data-parallel gradient reduction hidden behind the backward pass
    top_k: int = 10  # rows of the printed table
    search: AutoConfigSearchConfig = field(default_factory=AutoConfigSearchConfig)
    measure: AutoConfigMeasureConfig = field(default_factory=AutoConfigMeasureConfig)
    inference: AutoConfigInferenceConfig = field(default_factory=AutoConfigInferenceConfig)
    output_dir: str = "${run_dir}/auto_configurator"


@dataclass
class ClusterConfig:
    type: str = "local"  # local (processes on this machine) | slurm (sbatch per stage) | interactive (srun in salloc)
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time_limit: str = "04:00:00"
    exclusive: bool = False
    mem: Optional[str] = None  # sbatch --mem, e.g. 0 (all of it) or 200G
    gpus_per_node: Optional[int] = None  # null: trainer.devices, 0 with trainer.accelerator=cpu
    job_name_prefix: str = "nemo_llm"
    container_image: Optional[str] = None  # pyxis/enroot: srun --container-image
    container_mounts: List[str] = field(default_factory=list)  # host:container paths
    container_mount_home: bool = False
    container_workdir: Optional[str] = None
    python: Optional[str] = None  # null: this interpreter, or `python` inside a container
    env: Dict[str, str] = field(default_factory=dict)  # exported in every job, e.g. NCCL_IB_TIMEOUT
    requeue: bool = True  # training and prompt learning save on SIGUSR1, requeue and continue (resume=auto)
    preempt_signal_seconds: int = 120  # SIGUSR1 this long before the time limit
    master_port: Optional[int] = None  # null: 10000 + job id % 50000
    data_preparation_array: int = 1  # >1: tokenize the shards in a job array of this many tasks
    sbatch_args: List[str] = field(default_factory=list)  # extra #SBATCH lines, e.g. --constraint=h100
    srun_args: List[str] = field(default_factory=list)


@dataclass
class Config:
    stages: List[str] = field(default_factory=lambda: ["data_preparation", "training", "evaluation"])
    run_name: str = "${model.name}"
    run_dir: str = "results/${run_name}"
    # null: a new run (refused where run_dir already holds checkpoints); auto: continue from the
    # latest complete checkpoint in run_dir (a new run when there is none); or a checkpoint path
    resume: Optional[str] = None
    seed: int = 1234
    dry_run: bool = False  # print the plan and exit
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data_preparation: DataPreparationConfig = field(default_factory=DataPreparationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    conversion: ConversionConfig = field(default_factory=ConversionConfig)
    prompt_learning: PromptLearningConfig = field(default_factory=PromptLearningConfig)
    auto_configurator: AutoConfiguratorConfig = field(default_factory=AutoConfiguratorConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

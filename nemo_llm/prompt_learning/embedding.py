"""Virtual-prompt embeddings around a frozen GPT's embedding.

VirtualPromptEmbedding takes the place of model.embedding and keeps its submodules under their own
names (embedding.word_embeddings, ...), so base checkpoints load and tensor parallelism shards the
word embeddings as usual. Ordinary ids are looked up in the (frozen) word embeddings; where an id
is a virtual-token id (>= first_virtual_id) the task's learned vector replaces the lookup. The
substitution happens on the lookup's replicated output, before positions, dropout and the sequence
scatter of sequence parallelism, so it is the same at any tensor-parallel layout. Pipeline stages
after the first drop the embedding, and the prompts with it.

Per task, one module produces its virtual embeddings [n, h]:
- PromptTable (prompt tuning, and baked p-tuning): the vectors themselves.
- PromptEncoder (p-tuning, Liu et al. 2021): an MLP or a bidirectional LSTM + MLP over learned inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from nemo_llm.models.gpt import GPTModel

PROMPTS_PREFIX = "embedding.prompts."


class PromptTable(nn.Module):
    """weight [n, h]: the virtual-token embeddings, learned directly."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self) -> torch.Tensor:
        return self.weight


class PromptEncoder(nn.Module):
    """input_embeddings [n, h] -> encoder -> [n, h]. The reparametrisation makes the virtual tokens
    share structure, which trains faster and more stably than free vectors."""

    def __init__(self, init: torch.Tensor, encoder_type: str, encoder_hidden: int, num_layers: int, dropout: float):
        super().__init__()
        hidden = init.shape[1]
        self.encoder_type = encoder_type
        self.input_embeddings = nn.Parameter(init.detach().clone())
        if encoder_type == "lstm":
            self.lstm = nn.LSTM(hidden, encoder_hidden, num_layers=num_layers, dropout=dropout if num_layers > 1 else 0.0,
                                bidirectional=True, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(2 * encoder_hidden, encoder_hidden), nn.ReLU(),
                                     nn.Linear(encoder_hidden, hidden))
        elif encoder_type == "mlp":
            layers: list[nn.Module] = []
            width = hidden
            for _ in range(num_layers - 1):
                layers += [nn.Linear(width, encoder_hidden), nn.ReLU(), nn.Dropout(dropout)]
                width = encoder_hidden
            layers.append(nn.Linear(width, hidden))
            self.mlp = nn.Sequential(*layers)
        else:
            raise ValueError(f"p-tuning encoder_type {encoder_type!r}: use mlp or lstm")

    def forward(self) -> torch.Tensor:
        x = self.input_embeddings
        if self.encoder_type == "lstm":
            x = self.lstm(x[None])[0][0]
        return self.mlp(x)


class VirtualPromptEmbedding(nn.Module):
    """A GPT Embedding whose ids >= first_virtual_id are looked up in the tasks' prompt modules, in
    task order: task 0 owns the first total_virtual_tokens ids after first_virtual_id, and so on."""

    def __init__(self, embedding: nn.Module, first_virtual_id: int):
        super().__init__()
        # The base Embedding's parts under their own names, so checkpoint keys do not change.
        self.word_embeddings = embedding.word_embeddings
        self.position_embeddings = embedding.position_embeddings
        self.embedding_dropout = embedding.embedding_dropout
        self.first_virtual_id = first_virtual_id
        self.prompts = nn.ModuleDict()

    def virtual_embeddings(self) -> torch.Tensor:
        """[total virtual tokens, h], every task's vectors in id order."""
        return torch.cat([prompt() for prompt in self.prompts.values()])

    def forward(self, input_ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """input_ids [b, s] at positions offset .. offset + s - 1 -> [b, s, h]."""
        virtual = input_ids >= self.first_virtual_id
        x = self.word_embeddings(input_ids.masked_fill(virtual, 0))
        if len(self.prompts):
            table = self.virtual_embeddings()
            index = (input_ids - self.first_virtual_id).clamp(0, table.shape[0] - 1)
            x = torch.where(virtual[..., None], table[index].to(x.dtype), x)
        if self.position_embeddings is not None:
            positions = torch.arange(offset, offset + input_ids.shape[1], device=input_ids.device)
            x = x + self.position_embeddings(positions)
        return self.embedding_dropout(x)


def wrap_embedding(model: GPTModel) -> VirtualPromptEmbedding:
    """Put a VirtualPromptEmbedding in place of model.embedding (once) and return it. Virtual ids start
    after the padded vocabulary, so they never collide with a real token."""
    if not isinstance(model.embedding, VirtualPromptEmbedding):
        model.embedding = VirtualPromptEmbedding(model.embedding, model.config.vocab_size)
    return model.embedding


def initial_vectors(model: GPTModel, num_tokens: int, seed: int) -> torch.Tensor:
    """[num_tokens, h] rows of the word embeddings of random real tokens: virtual tokens start at the
    scale and in the region of the space the frozen model expects."""
    generator = torch.Generator().manual_seed(seed)
    weight = model.embedding.word_embeddings.weight
    ids = torch.randint(0, weight.shape[0], (num_tokens,), generator=generator)
    return weight.detach()[ids.to(weight.device)].float().clone()


def freeze_all_but(model: GPTModel, trainable_tasks: list[str]) -> None:
    """requires_grad off for every parameter but the prompt modules of trainable_tasks: the base model
    and earlier tasks are never changed."""
    prefixes = tuple(f"{PROMPTS_PREFIX}{task}." for task in trainable_tasks)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))


def prompt_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """{<task>.<param>: tensor} of the prompt modules, full tensors on CPU (from the first pipeline stage's
    part; under FSDP this gathers, so call it on every rank of the data-parallel group)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(PROMPTS_PREFIX):
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            state[name[len(PROMPTS_PREFIX):]] = tensor.detach().cpu().clone()
    return state

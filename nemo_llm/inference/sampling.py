"""How the next token is chosen: greedy, or sampled with temperature, top-k and top-p (nucleus,
Holtzman et al. 2019), after a repetition penalty (CTRL, Keskar et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    """One generation request's settings (the server's JSON fields have the same names)."""

    max_new_tokens: int = 32
    greedy: bool = False  # argmax; temperature, top_k and top_p are then ignored
    temperature: float = 1.0
    top_k: int = 0  # keep the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p; 1.0 keeps all
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the prompt or output less likely
    stop: list[str] = field(default_factory=list)  # generation of a prompt ends before the first of these
    stop_on_eod: bool = True
    seed: int = 0  # same seed, prompts and model: same text
    logprobs: bool = False  # also return each generated token's log-probability under the model

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 0")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be positive (or set greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 keeps every token)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty} must be positive (1.0 is off)")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop must be a list of non-empty strings")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits [b, V]; seen [b, t] token ids already in each row. A seen token's logit is divided by
    penalty when positive and multiplied by it when negative, so it always becomes less likely."""
    if penalty == 1.0 or seen.shape[1] == 0:
        return logits
    scores = logits.gather(1, seen)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(1, seen, scores)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """logits [b, V] with the tokens outside the top-k and outside the top-p nucleus set to -inf."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_next_token(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None,
                      generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """logits [b, V] of the next position -> token ids [b]; seen [b, t] are the tokens the
    repetition penalty applies to. Row i draws from generators[i], so a row's tokens do not depend on
    the other rows of its batch."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p).softmax(dim=-1)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    return torch.cat([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generators)])


def row_generators(seed: int, rows: list[int], device: torch.device) -> list[torch.Generator]:
    """One generator per prompt, seeded by the request's seed and the prompt's place in the request."""
    return [torch.Generator(device=device).manual_seed(seed * 1_000_003 + row) for row in rows]

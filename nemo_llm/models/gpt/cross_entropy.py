"""Output layer + cross-entropy in chunks of tokens, never holding the [tokens, vocab] logits.

The plain loss (gpt_loss) materialises the logits in the compute dtype, an fp32 copy for the
softmax, and their gradient: for GPT-3 1.3B at micro batch 4 x 2048 tokens and a 50k vocabulary
that is 3.3 GB, more than all the layers' activations with flash attention. Here the output
matmul, the log-softmax and both gradients are computed one chunk of tokens at a time in the
forward pass (as Liger's fused linear cross-entropy does), so at most [chunk, vocab] logits exist at
once; backward only scales the gradients already computed by the incoming gradient.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # a label that takes no part in the loss (PyTorch's convention)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for this device (the output layer's matmul would run in it
    without fusion), else the parameters' dtype."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_tokens: int,
                dtype: torch.dtype) -> torch.Tensor:
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        valid = labels != IGNORE_INDEX
        count = valid.sum().clamp(min=1).to(torch.float32)
        w = weight.to(dtype)
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] \
            else None
        for start in range(0, hidden.shape[0], chunk_tokens):
            h = hidden[start:start + chunk_tokens].to(dtype)
            lab = labels[start:start + chunk_tokens]
            ok = valid[start:start + chunk_tokens]
            logits = (h @ w.t()).float()  # [chunk, vocab]: the only logits that exist at once
            target = lab.clamp(min=0)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, target[:, None]).squeeze(1)
            loss_sum += torch.where(ok, lse - picked, 0.0).sum()
            if not needs_grad:
                continue
            # d(mean loss)/d(logits) = (softmax - one_hot) / count, zero on ignored tokens; in place.
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits[torch.arange(len(lab), device=lab.device), target] -= 1.0
            grad_logits.mul_((ok.float() / count)[:, None])
            grad_logits = grad_logits.to(dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + chunk_tokens] = (grad_logits @ w).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ h).float()
        ctx.save_for_backward(grad_hidden if grad_hidden is not None else torch.empty(0),
                              grad_weight if grad_weight is not None else torch.empty(0))
        ctx.weight_dtype = weight.dtype
        return loss_sum / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        out_hidden = grad_hidden * grad_output.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        out_weight = (grad_weight * grad_output).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return out_hidden, out_weight, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk_tokens: int = 4096) -> torch.Tensor:
    """Mean cross-entropy of logits = hidden @ weight.T against labels, over the labels that are not
    IGNORE_INDEX; equal to gpt_loss(output_layer(hidden), labels) and its gradients.
    hidden [b, s, h] (or [n, h]), weight [vocab, h], labels [b, s] (or [n])."""
    dtype = _compute_dtype(hidden, weight)
    return _LinearCrossEntropy.apply(hidden.flatten(0, -2), weight, labels.flatten(), chunk_tokens, dtype)

"""The LM head and its log-softmax, only at the positions an objective reads, in row chunks.

A causal LM's forward ends in ``logits = hidden @ W.T`` over every position, ``(batch, seq,
vocab)``, and a log-softmax over it. Objectives read the log-prob of one token per response
position. `linear_logps` computes exactly those from the hidden states before each response
token, ``chunk`` rows at a time: the float32 logits of a chunk exist only inside the chunk, and
backward recomputes them from the saved hidden states (one extra ``hidden @ W.T`` per chunk)
instead of keeping a ``(tokens, vocab)`` tensor alive from forward to backward. With Qwen2.5's
151,936-token vocabulary that tensor is 0.6 MB per token in float32, more than the rest of a
small model's activations together.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# Rows per chunk such that a chunk's float32 logits take about this many bytes.
CHUNK_BYTES = 1 << 27


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's, when autocast is on for the device."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


class _LinearLogps(torch.autograd.Function):
    """log softmax(h @ W.T)[label] per row, and (detached) the entropy of each row's distribution."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, labels: Tensor, dtype: torch.dtype, entropy: bool) -> Any:
        n, chunk = hidden.shape[0], chunk_rows(weight.shape[0])
        logps = hidden.new_empty(n, dtype=torch.float32)
        lse = hidden.new_empty(n, dtype=torch.float32)
        entropies = hidden.new_empty(n if entropy else 0, dtype=torch.float32)
        w = weight.to(dtype)
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            logits = (hidden[rows].to(dtype) @ w.T).float()
            lse[rows] = torch.logsumexp(logits, dim=-1)
            logps[rows] = logits.gather(-1, labels[rows, None]).squeeze(-1) - lse[rows]
            if entropy:  # H = lse − Σ p·z
                probs = (logits - lse[rows, None]).exp_()
                entropies[rows] = lse[rows] - (probs * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.dtype = dtype
        ctx.mark_non_differentiable(entropies)
        return logps, entropies

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor) -> Any:
        hidden, weight, labels, lse = ctx.saved_tensors
        dtype, chunk = ctx.dtype, chunk_rows(weight.shape[0])
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        w = weight.to(dtype)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            h, g = hidden[rows].to(dtype), grad[rows].float()
            # d logp_y / d z = onehot(y) − softmax(z): the softmax recomputed from the saved lse.
            dz = (h @ w.T).float().sub_(lse[rows, None]).exp_().mul_(-g[:, None])
            dz.scatter_add_(-1, labels[rows, None], g[:, None])
            dz = dz.to(dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = (dz @ w).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(dz.T.float(), h.float())  # no copies in float32
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None


def linear_logps(
    hidden: Tensor, weight: Tensor, labels: Tensor, entropy: bool = False, entropy_grad: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of ``labels`` under ``softmax(hidden @ weight.T)``, chunked.

    Args:
        hidden: ``(N, hidden)`` the (final-norm) hidden state before each scored token.
        weight: ``(vocab, hidden)`` the LM head's weight (no bias).
        labels: ``(N,)`` the scored tokens.
        entropy: also return each distribution's entropy ``(N,)``.
        entropy_grad: the entropy needs a gradient (an entropy bonus): computed with plain
            autograd, which keeps each chunk's float32 softmax for backward.

    Returns:
        ``(logps, entropy)``: ``(N,)`` float32, and ``(N,)`` float32 or ``None``.
    """
    dtype = _compute_dtype(hidden)
    if not (entropy and entropy_grad and torch.is_grad_enabled()):
        logps, entropies = _LinearLogps.apply(hidden, weight, labels, dtype, entropy)
        return logps, entropies if entropy else None
    chunks, entropies, size = [], [], chunk_rows(weight.shape[0])
    for start in range(0, hidden.shape[0], size):
        logits = (hidden[start : start + size].to(dtype) @ weight.to(dtype).T).float()
        logp = torch.log_softmax(logits, dim=-1)
        chunks.append(logp.gather(-1, labels[start : start + size, None]).squeeze(-1))
        entropies.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(chunks), torch.cat(entropies)

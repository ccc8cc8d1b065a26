"""Per-token log-probabilities of given tokens, the input every objective starts from."""

from __future__ import annotations

import torch
from torch import Tensor


def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(labels[b, t] | ·) from ``logits`` without keeping a full log-softmax.

    Args:
        logits: ``(batch, seq, vocab)`` in any float dtype.
        labels: ``(batch, seq)`` token ids, aligned with ``logits`` (already shifted).

    Returns:
        ``(batch, seq)`` float32 log-probs. The log-sum-exp runs in float32 one row at a time,
        so bf16 logits stay accurate and the float32 copy never exceeds one row of the batch
        (TRL's ``selective_log_softmax`` makes the same trade).
    """
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1).float()
    norm = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])
    return picked - norm


def shifted_logps(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Log-probs of each next token: ``(batch, seq)`` logits and ids → ``(batch, seq - 1)``."""
    return token_logps(logits[:, :-1], input_ids[:, 1:])


def token_entropy(logits: Tensor) -> Tensor:
    """``(batch, seq, vocab)`` logits → ``(batch, seq)`` entropy −Σ p·log p of each distribution,
    in float32 one row at a time. Under autograd every row's float32 softmax is kept for
    backward; call it under no_grad when only the value is needed."""
    rows = []
    for row in logits:
        logp = torch.log_softmax(row.float(), dim=-1)
        rows.append(-(logp.exp() * logp).sum(-1))
    return torch.stack(rows)

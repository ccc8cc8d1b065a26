"""The bare PyTorch contender of `tools/bench.py`: the same math in the fewest operations.

No framework: rows tokenised once and taken in lit_align's first-epoch order, pad to the batch's longest, one
forward (two for DPO, RLOO and GRPO, with the reference), `cross_entropy` or a gather of the
log-softmax, AdamW, gradient clipping. RLOO and GRPO are on-policy with one update per rollout,
so the sampling policy's log-probs are the training forward's, detached: no separate forward for
them.
AFT is *flat*: every chain of a group is its own full sequence (its prompt computed once per
chain), scored by its length-normalised log-likelihood, with lit_align's pure `aft_alignment_loss`
for L_A. The reward model is a one-label sequence classifier read at each sequence's last token.
It is the floor the frameworks are measured against, not a usable trainer.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from bench_setup import Gate, Spec, build_model, datamodule, rows, tokenizer

from lit_align.objectives.aft import aft_alignment_loss
from lit_align.objectives.pg_parts import group_std_advantages
from lit_align.rewards.math import MathReward


def encode(tok, prompt: str, response: str | None = None) -> tuple[list[int], int]:
    """bos (when the tokenizer has one) + prompt (+ response + eos), and the prompt's length:
    lit_align's layout."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    prompt_ids = [*bos, *tok(prompt, add_special_tokens=False)["input_ids"]]
    if response is None:
        return prompt_ids, len(prompt_ids)
    return prompt_ids + tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id], len(prompt_ids)


def padded(seqs: list[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        at = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, at], mask[i, at] = torch.tensor(s), 1
    return ids, mask


def token_logps(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(token t | tokens < t) of every token after the first: ``(batch, T − 1)``."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def response_logps(
    model, ids: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor, mean: bool = False
) -> torch.Tensor:
    """Σ_t log p(token t) over each row's response tokens (their mean with ``mean``): ``(batch,)``."""
    total = (token_logps(model, ids, mask) * loss_mask[:, 1:]).sum(-1)
    return total / loss_mask[:, 1:].sum(-1).clamp(min=1) if mean else total


def response_mask(seqs: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """``(ids, attention_mask, loss_mask)`` of right-padded (sequence, prompt length) pairs."""
    ids, mask = padded([s for s, _ in seqs], pad_id)
    loss_mask = mask.clone()
    for i, (_, prompt_len) in enumerate(seqs):
        loss_mask[i, :prompt_len] = 0
    return ids, mask, loss_mask


def batches(encoded: list, batch_size: int):
    """Consecutive batches of the rows, in the order `rows` gives them, over and over."""
    while True:
        for i in range(0, len(encoded) - batch_size + 1, batch_size):
            yield encoded[i : i + batch_size]


def run(spec: Spec, gate: Gate) -> None:
    torch.manual_seed(spec.seed)
    tok = tokenizer(spec)
    model = build_model(spec, tok, head="score" if spec.workload == "rm" else "lm")
    if spec.workload == "generate":
        return sample_forever(spec, gate, tok, model, train=False)
    opt = torch.optim.AdamW(
        model.parameters(), lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay, fused=True
    )  # fused, as lit_align and TRL default to

    def update(loss: torch.Tensor) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if spec.workload in ("rloo", "grpo"):
        return sample_forever(spec, gate, tok, model, train=True, update=update)
    if spec.workload == "sft":
        encoded = [encode(tok, r["prompt"], r["response"]) for r in rows(spec, tok, "sft")]
        for batch in batches(encoded, spec.batch_size):
            gate.step_begin()
            ids, mask = padded([s for s, _ in batch], tok.pad_token_id)
            labels = ids.masked_fill(mask == 0, -100)
            for i, (_, prompt_len) in enumerate(batch):
                labels[i, :prompt_len] = -100
            logits = model(input_ids=ids, attention_mask=mask).logits
            update(F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100))
    elif spec.workload == "dpo":
        reference = build_model(spec, tok).eval().requires_grad_(False)
        pairs = [
            (encode(tok, r["prompt"], r["chosen"]), encode(tok, r["prompt"], r["rejected"]))
            for r in rows(spec, tok, "pairs")
        ]
        for batch in batches(pairs, spec.batch_size):
            gate.step_begin()
            seqs = [c for c, _ in batch] + [r for _, r in batch]  # chosen and rejected in one forward
            ids, mask, loss_mask = response_mask(seqs, tok.pad_token_id)
            policy = response_logps(model, ids, mask, loss_mask)
            with torch.no_grad():
                ref = response_logps(reference, ids, mask, loss_mask)
            margin = (policy - ref).view(2, -1)
            update(-F.logsigmoid(spec.beta * (margin[0] - margin[1])).mean())
    elif spec.workload == "rm":
        pairs = [
            (encode(tok, r["prompt"], r["chosen"])[0], encode(tok, r["prompt"], r["rejected"])[0])
            for r in rows(spec, tok, "pairs")
        ]
        for batch in batches(pairs, spec.batch_size):
            gate.step_begin()
            ids, mask = padded([c for c, _ in batch] + [r for _, r in batch], tok.pad_token_id)
            scores = model(input_ids=ids, attention_mask=mask).logits[:, 0].view(2, -1)  # at the last token
            update(-F.logsigmoid(scores[0] - scores[1]).mean())  # Bradley–Terry
    elif spec.workload == "aft":
        groups = [
            ([encode(tok, r["prompt"], c["text"]) for c in r["responses"]], r["responses"])
            for r in rows(spec, tok, "groups")
        ]
        for batch in batches(groups, spec.batch_size):
            gate.step_begin()
            ids, mask, loss_mask = response_mask([s for seqs, _ in batch for s in seqs], tok.pad_token_id)
            scores = response_logps(model, ids, mask, loss_mask, mean=True)  # s(c), every chain in full
            update(flat_aft_loss(spec, scores, [chains for _, chains in batch]))
    else:
        raise ValueError(f"unknown workload {spec.workload!r}")


def flat_aft_loss(spec: Spec, scores: torch.Tensor, groups: list[list[dict]]) -> torch.Tensor:
    """AFT's L = w·L_VFT + L_A (boundary constraint, binary feedback), mean over the groups.

    ``scores`` ``(chains,)`` are the chains' length-normalised log-likelihoods, the groups' chains
    in order; each chain is ``{"correct", "reference", ...}``. L_VFT is the mean over a group's
    correct and reference chains of their token-mean NLL (−s); L_A pairs the correct chains with
    the wrong ones, reference chains left out.
    """
    total, at = scores.new_zeros(()), 0
    for chains in groups:
        s = scores[at : at + len(chains)]
        at += len(chains)
        vft = torch.tensor([c["correct"] or c["reference"] for c in chains])
        ranked = torch.tensor([not c["reference"] for c in chains])
        ranks = torch.tensor([0 if c["correct"] else 1 for c in chains])
        if vft.any():
            total = total - spec.vft_weight * s[vft].mean()
        total = total + aft_alignment_loss(s[ranked], ranks[ranked], spec.beta, "boundary")
    return total / len(groups)


def grpo_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    scores: torch.Tensor,
    k: int,
    beta: float,
    epsilon: float,
) -> torch.Tensor:
    """GRPO's loss on one on-policy rollout trained on once (Shao et al. 2024, arXiv 2402.03300):
    A_i = (r_i − mean) / (std + 1e-4) in each prompt's group (lit_align's pure `group_std_advantages`;
    an unscorable sample, score NaN, gets 0 and is left out of its group's statistics), per token
    −min(ρ·A, clip(ρ, 1 ± ε)·A) + β·k3, each sequence's token mean, then the mean over sequences.
    ρ = exp(log π − log π.detach()) is 1 in value with the gradient of log π: the policy that sampled
    is this one, so there is no separate forward for the old log-probs and the clip never binds.

    ``logps``, ``ref_logps``, ``mask``: ``(samples, T)``; ``scores``: ``(samples,)``, the k samples
    of each prompt together.
    """
    groups = scores.view(-1, k)
    advantages = group_std_advantages(groups.nan_to_num(0.0), ~groups.isnan()).reshape(-1, 1)
    ratio = torch.exp(logps - logps.detach())
    surrogate = -torch.min(ratio * advantages, ratio.clamp(1 - epsilon, 1 + epsilon) * advantages)
    log_ratio = ref_logps - logps
    kl = torch.exp(log_ratio) - log_ratio - 1  # k3, per token
    losses = surrogate + beta * kl
    return ((losses * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def sample_forever(spec: Spec, gate: Gate, tok, model, train: bool, update=None) -> None:
    """Generation alone, or RLOO or GRPO: sample k per prompt, score, advantages, one update."""
    reference = build_model(spec, tok).eval().requires_grad_(False) if train else None
    prompts = datamodule(spec, tok, "rollout").prompt_set().to_list()
    encoded = [encode(tok, p["prompt"])[0] for p in prompts]
    reward, k = MathReward(), spec.num_samples
    for step in itertools.count():
        at = [(step * spec.batch_size + i) % len(prompts) for i in range(spec.batch_size)]
        gate.step_begin()
        ids, mask = padded([encoded[i] for i in at for _ in range(k)], tok.pad_token_id, left=True)
        with torch.no_grad():
            sequences = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=spec.max_new_tokens, do_sample=True,
                temperature=spec.temperature, top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )  # fmt: skip
        completion = sequences[:, ids.shape[1] :]
        is_eos = completion == tok.eos_token_id
        keep = ((is_eos.long().cumsum(-1) - is_eos.long()) == 0).long()  # up to and with the first eos
        texts = tok.batch_decode(completion * keep, skip_special_tokens=True)
        if not train:
            continue
        scores = reward([], texts, answer=[prompts[i]["answer"] for i in at for _ in range(k)])
        full_mask = torch.cat([mask, keep], 1)
        loss_mask = torch.cat([torch.zeros_like(mask), keep], 1)
        seq = torch.cat([ids, completion * keep], 1)
        if spec.workload == "grpo":
            logps = token_logps(model, seq, full_mask)
            with torch.no_grad():
                ref = token_logps(reference, seq, full_mask)
            unscored = torch.tensor([float("nan") if s is None else s for s in scores])
            update(grpo_loss(logps, ref, loss_mask[:, 1:], unscored, k, spec.grpo_kl_coef, spec.clip_epsilon))
            continue
        logps = response_logps(model, seq, full_mask, loss_mask)
        with torch.no_grad():
            kl = logps.detach() - response_logps(reference, seq, full_mask, loss_mask)  # k1, summed
        rewards = (torch.tensor([s or 0.0 for s in scores]) - spec.kl_coef * kl).view(-1, k)
        advantages = (rewards - (rewards.sum(1, keepdim=True) - rewards) / (k - 1)).flatten()
        update(-(advantages * logps).mean())  # −A·Σ_t log π, mean over samples

"""The critic of PPO: a scalar value V(s_t) at every position of a sequence."""

from __future__ import annotations

import copy

from torch import Tensor, nn
from transformers import PreTrainedModel

from lit_align.models.response_forward import response_hidden


class ValueHead(nn.Module):
    """A linear head over a causal LM trunk's last hidden state.

    ``separate=False`` puts the head on the policy's own trunk: the module's one training
    forward gives both log-probs and values (cheap; the value loss also shapes the policy's
    trunk, weighted by ``vf_coef``). ``separate=True`` gives the critic its own copy of the
    trunk, initialised from the policy: twice the compute and memory, no shared gradients.

    Args:
        policy: the causal LM whose trunk (``base_model``) the critic reads or copies.
        separate: whether the critic has its own trunk.
    """

    def __init__(self, policy: PreTrainedModel, separate: bool = False) -> None:
        super().__init__()
        # A LoRA policy's (PEFT) decoder is inside its base model; the copy keeps the adapters,
        # so a separate critic trains its own adapters on the frozen trunk.
        model = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        self.trunk = copy.deepcopy(model.base_model) if separate else None
        hidden = policy.config.get_text_config().hidden_size
        self.head = nn.Linear(hidden, 1)
        # Small weights and zero bias: the first values are near 0, so an untrained critic
        # neither dominates the first advantages nor pulls hard on a shared trunk.
        nn.init.normal_(self.head.weight, std=1 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    @property
    def reads_policy(self) -> bool:
        """Whether it reads the policy's last hidden states (a shared trunk), from the policy's
        own forward."""
        return self.trunk is None

    def forward(self, inputs: dict[str, Tensor], policy_hidden: Tensor | None = None, shared: bool = True) -> Tensor:
        """``(R, T)`` values of the states before each response token (aligned with the
        policy's log-probs). ``inputs``: the prompts and responses
        (`lit_align.data.batch.Responses.forward_inputs`); ``policy_hidden`` ``(R, T, hidden)``:
        the policy's hidden states before each response token, required for a shared trunk and
        ignored with a separate one, which runs its own (shared-prefix) forward."""
        if self.trunk is not None:
            hidden = response_hidden(self.trunk, **inputs, shared=shared)
        elif policy_hidden is None:
            raise ValueError("a shared-trunk value head needs the policy's hidden states")
        else:
            hidden = policy_hidden
        return self.head(hidden).squeeze(-1).float()

"""FSDP2 for `strategy=fsdp2`: `fully_shard` on each decoder layer, then on the whole model
(and the wrap policy of `strategy=fsdp`, FSDP1).

Lightning's ModelParallelStrategy (lit_align's `FSDP2Strategy`) leaves the parallelisation to the
module's ``configure_model``, which calls `configure_models`; this module holds the model-side
half: the memory and speed switches, which submodules are sharded units, how a sharded model
generates, and how its full weights come back for export. Any transformers decoder works: its
layer classes are named by the model's own ``_no_split_modules`` (what transformers keeps on one
device when it splits a model), so no per-architecture list is kept here.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp.wrap import CustomPolicy
from torch.distributed.tensor import DTensor

from lit_align.strategy import HYBRID_DIMS

if TYPE_CHECKING:
    from lit_align.models.value import ValueHead


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model (``LlamaDecoderLayer``, ``Qwen2DecoderLayer``
    …): the submodules whose class is in the model's ``_no_split_modules``."""
    names: set[str] = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or ())
    # Matched along the class's bases too: FSDP2 swaps a sharded layer's class for a subclass
    # (FSDPLlamaDecoderLayer), which the module still is.
    layers = [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class in _no_split_modules; cannot shard it")
    return layers


def shard(model: nn.Module, mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy | None = None) -> None:
    """Shards ``model`` over ``mesh`` in place: each decoder layer is one FSDP unit (gathered for
    its own forward and backward, then freed), the rest (embeddings, final norm, head) the root
    unit. Layers go first because `fully_shard` on a parent skips parameters already sharded."""
    policy = {"mp_policy": mp_policy} if mp_policy is not None else {}
    for layer in reversed(decoder_layers(model)):  # innermost first, should layer classes nest
        fully_shard(layer, mesh=mesh, **policy)
    fully_shard(model, mesh=mesh, **policy)


def configure_models(policy: nn.Module, reference: nn.Module | None, critic: ValueHead | None,
                     mesh: DeviceMesh | None, gradient_checkpointing: bool = False,
                     compile_layers: bool = False) -> None:  # fmt: skip
    """Activation checkpointing and compiling of the policy's layers, then FSDP2 sharding of the
    policy, the reference and the critic over ``mesh`` (Lightning's ``(data_parallel,
    tensor_parallel)`` mesh, or `FSDP2Strategy`'s ``(replicate, shard)`` one for HSDP; None:
    no sharding). In place; call once.

    Order matters: checkpointing and compiling wrap each decoder layer's forward, and
    `fully_shard` then makes those layers its units (torchtune and torchtitan order them the
    same way).
    """
    if gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA's frozen embeddings) and with FSDP2.
        kwargs = {"use_reentrant": False}
        if hasattr(policy, "activation_checkpointing_enable"):  # its name from transformers 5.x on
            policy.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if compile_layers:
        # Each decoder layer, in place (parameter names unchanged): one graph reused by every
        # layer, dynamic in batch and length; generation's cached steps compile once more.
        for layer in decoder_layers(policy):
            layer.compile(dynamic=True)
    if mesh is None:
        return
    if mesh.mesh_dim_names != HYBRID_DIMS:  # HSDP's 2-D mesh is FSDP2's to read as it is
        if mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                "strategy=fsdp2 shards over data parallelism only: set trainer.strategy.tensor_parallel_size=1"
            )
        mesh = mesh["data_parallel"]
    for model in (policy, reference, critic and critic.trunk):
        if model is not None:
            shard(model, mesh)
    if critic is not None:  # its head (and trunk root): every trained weight must be sharded
        fully_shard(critic, mesh=mesh)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are DTensors (sharded by FSDP2)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def has_fsdp1(model: nn.Module) -> bool:
    """Whether ``model`` holds modules wrapped by FSDP1 (`strategy=fsdp`)."""
    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def synced_generation(model: nn.Module) -> bool:
    """``generate``'s ``synced_gpus``: a sharded model's every forward is a collective, so a rank
    whose sequences have all ended must keep stepping until every rank's have. transformers
    detects this itself only for models it sharded."""
    sharded = is_sharded(model) or has_fsdp1(model)
    return sharded and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def full_state_dict(model: nn.Module, root: nn.Module | None = None, prefix: str = "") -> dict[str, torch.Tensor]:
    """The full (unsharded) weights of ``model`` on the CPU. A collective that every rank must
    enter; rank 0 gets the tensors (the others may get an empty dict).

    FSDP1 gathers only from its root wrapper: pass it as ``root`` with ``model``'s ``prefix`` in
    it (``policy.``); FSDP2 gathers from ``model`` itself.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if root is None or not has_fsdp1(root):
        return get_model_state_dict(model, options=options)
    state = get_model_state_dict(root, options=options)
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


def _is_decoder_layer(module: nn.Module, suffix: str) -> bool:
    return type(module).__name__.endswith(suffix)


def decoder_layer_policy(suffix: str = "DecoderLayer") -> CustomPolicy:
    """For `strategy=fsdp` (FSDP1, which wraps the model before ``configure_model`` could name
    its layers): wrap, or checkpoint, every module whose class name ends in ``suffix``, as
    transformers names its decoder blocks (``LlamaDecoderLayer``, ``Qwen2DecoderLayer`` …)."""
    return CustomPolicy(partial(_is_decoder_layer, suffix=suffix))

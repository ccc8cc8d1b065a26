"""`strategy=fsdp2`: Lightning's ModelParallelStrategy with every rank of every node data-parallel,
optionally hybrid (HSDP: shard inside a node, replicate across nodes)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.device_mesh import init_device_mesh

# The mesh `configure_model` gets under ``hybrid``: FSDP2's `fully_shard` reads a 2-D mesh as
# (replicate, shard) in this order.
HYBRID_DIMS = ("replicate", "shard")


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over ``trainer.num_nodes × trainer.devices`` processes.

    Lightning's own default (``data_parallel_size="auto"``) makes only the nodes data-parallel
    and a node's devices tensor-parallel; lit_align shards over data parallelism alone, so the
    data-parallel size is the whole world and the tensor-parallel size 1. Batches are split
    over all ranks either way (Lightning's sampler reads the ``data_parallel`` dimension).

    Args:
        hybrid: shard each model inside a node and replicate it across nodes (HSDP): the
            all-gathers of every layer stay on the node's fast links and only the gradient
            all-reduce crosses nodes, at the cost of one copy of the sharded model per node.
            Pays when a node holds the model and the links between nodes are the bottleneck;
            needs ``trainer.num_nodes > 1``.
        kwargs: Lightning's ModelParallelStrategy arguments but the two sizes
            (``save_distributed_checkpoint``, ``process_group_backend``, ``timeout``).
    """

    def __init__(self, hybrid: bool = False, **kwargs: Any) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)
        self.hybrid = hybrid

    def setup_environment(self) -> None:
        # num_nodes and num_processes are set by the trainer before this runs; the world size
        # only once the process group is up, inside super().
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()
        if self.hybrid:
            # Ranks are node-major (node_rank * devices + local_rank), so a row is one node.
            mesh = init_device_mesh(self.root_device.type, (self.num_nodes, self.num_processes),
                                    mesh_dim_names=HYBRID_DIMS)  # fmt: skip
            assert self.lightning_module is not None
            self.lightning_module._device_mesh = mesh

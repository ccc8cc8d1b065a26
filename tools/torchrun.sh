#!/usr/bin/env bash
# lit_align across nodes with torchrun: run this on every node, the same command but NODE_RANK.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 RUN_DIR=/shared/runs/dpo \
#     tools/torchrun.sh objective=dpo strategy=fsdp2 trainer.precision=bf16-mixed
#
# torchrun starts one process per GPU and sets RANK, LOCAL_RANK, GROUP_RANK, WORLD_SIZE;
# Lightning reads them (TorchElasticEnvironment). RUN_DIR must be on a filesystem every node
# sees: rank 0 of node 0 writes the run directory, the others read from it (README: Scaling
# out). ckpt_path=last resumes a run stopped there, and starts afresh when there is nothing yet.
# Optional: GPUS (processes per node; default: every GPU nvidia-smi lists), MASTER_PORT.
set -euo pipefail
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}" "${RUN_DIR:?set RUN_DIR}"
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS" \
  --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
  -m lit_align trainer.num_nodes="$NNODES" trainer.devices="$GPUS" hydra.run.dir="$RUN_DIR" ckpt_path=last "$@"

#!/usr/bin/env bash
# On nvidia-h200-x2, for the next session: why 2 GPUs give 1.72x one GPU at 16 rows each (ddp_scaling2.sh), not
# 1.8x. One GPU as the reference, then DDP as train.py wraps it, with static_graph and with larger buckets, each
# profiled for 3 steps on rank 0 (GPU busy vs wall, NCCL time, top kernels). ~4 minutes.
set -o pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
timeout 150 python3 notes/gpu/exp_ddp.py --batch-size 16 --profile default 2>&1 | grep -v -i "warn" | tee $OUT/exp_ddp.log
timeout 400 torchrun --nproc_per_node=2 notes/gpu/exp_ddp.py --batch-size 16 --profile default static bucket100 2>&1 \
  | grep -v -i "warn" | tee -a $OUT/exp_ddp.log

#!/usr/bin/env bash
# On nvidia-h200-x2, after the host-side fixes (BlockMask without vmap, pinned batch copies) and the fused loss:
# one GPU at 16 rows, then DDP 2 x 16 rows three times (default, bucket100, default) to see the run-to-run spread
# that ddp_scaling3/4 showed (1.54x and 1.84x for the same code). ~4 minutes.
set -o pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
E="notes/gpu/exp_ddp.py --batch-size 16 --steps 40 --warmup 10"
timeout 100 python3 $E default default 2>&1 | grep -v -i "warn" | tee $OUT/exp_ddp5.log
timeout 300 torchrun --nproc_per_node=2 $E default bucket100 default 2>&1 | grep -v -i "warn" | grep -v "^ \|^\*" | tee -a $OUT/exp_ddp5.log

#!/usr/bin/env bash
# On nvidia-h200-x2: ddp_scaling3.sh showed DDP's NCCL kernels take ~16 ms of a 176 ms step while the step is 40 ms
# longer than one GPU's 136 ms, and the 1-GPU step already spends ~15% of its wall with the GPU idle. Chrome traces of
# 3 steps (1 GPU, DDP default) to see where the GPU waits; bf16 gradient all-reduce; NCCL's Simple protocol. ~4 min.
set -o pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
E="notes/gpu/exp_ddp.py --batch-size 16 --profile --trace $OUT"
timeout 120 python3 $E default 2>&1 | grep -v -i "warn" | grep -v "^ " > $OUT/exp_ddp4.log
timeout 200 torchrun --nproc_per_node=2 $E default bf16hook 2>&1 | grep -v -i "warn" | grep -v "^ " >> $OUT/exp_ddp4.log
echo "NCCL_PROTO=Simple:" >> $OUT/exp_ddp4.log
NCCL_PROTO=Simple timeout 120 torchrun --nproc_per_node=2 notes/gpu/exp_ddp.py --batch-size 16 default 2>&1 \
  | grep -v -i "warn" | grep -v "^ " >> $OUT/exp_ddp4.log
rm -f $OUT/trace_bf16hook_2.json.gz

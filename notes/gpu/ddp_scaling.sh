#!/usr/bin/env bash
# On nvidia-h200-x2 (random weights at the 0.5B shape): tokens/s of 1 GPU vs 2 GPUs (DDP, same per-GPU batch), and
# the loss curve of 2 GPUs x batch 8 against 1 GPU x batch 16 (the same global batch).
set -o pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -c "import sys, torch; sys.path.insert(0, '.'); import bench; bench.get_model('0.5b', 'cuda', torch.bfloat16, '/dev/shm/r05')" >/dev/null 2>&1
A="--init_from=/dev/shm/r05 --datasets=gsm8k --prompt_format=chat --seq_len=1024 --max_iters=40 --lr=1e-5 --warmup_iters=10 --log_interval=10 --eval_interval=1000 --eval_samples=0 --save_interval=1000 --val_size=200"
F="^step [0-9]*/\|done\|x 2 processes"
timeout 200 python3 train.py $A --batch_size=8 --keep_last=1 --out_dir=/dev/shm/g1b8 2>&1 | grep "$F" | tee $OUT/g1b8.log
timeout 200 torchrun --nproc_per_node=2 train.py $A --batch_size=8 --keep_last=1 --out_dir=/dev/shm/g2b8 2>&1 | grep "$F" | tee $OUT/g2b8.log
timeout 200 python3 train.py $A --batch_size=16 --keep_last=1 --out_dir=/dev/shm/g1b16 2>&1 | grep "$F" | tee $OUT/g1b16.log
for d in g1b8 g2b8 g1b16; do cp /dev/shm/$d/metrics.jsonl $OUT/metrics_$d.jsonl; done

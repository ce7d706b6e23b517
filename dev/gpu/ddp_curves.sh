#!/usr/bin/env bash
# On nvidia-h200-x2 (random weights at the 0.5B shape), after the fused loss (LinearCrossEntropy): train.py's loss
# curves for the same global batch of 16 rows on one GPU, on two under DDP (2 x 8) and under FSDP2 (2 x 8). ~4 min.
set -o pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -c "import sys, torch; sys.path.insert(0, '.'); import bench; bench.get_model('0.5b', 'cuda', torch.bfloat16, '/dev/shm/r05')" >/dev/null 2>&1
A="--init_from=/dev/shm/r05 --datasets=gsm8k --prompt_format=chat --seq_len=1024 --max_iters=40 --lr=1e-5 --warmup_iters=10 --log_interval=10 --eval_interval=1000 --eval_samples=0 --save_interval=1000 --val_size=200 --keep_last=1"
F="^step [0-9]*/\|done\|x 2 processes\|Error"
run() { name=$1; shift; echo "== $name: $*" | tee -a $OUT/ddp_curves.log
  timeout 200 "$@" $A --out_dir=/dev/shm/$name 2>&1 | grep "$F" | tee -a $OUT/ddp_curves.log
  sed "s/^{/{\"run\": \"$name\", /" /dev/shm/$name/metrics.jsonl >> $OUT/ddp_curves_metrics.jsonl; rm -rf /dev/shm/$name; }
run g1b16 python3 train.py --batch_size=16
run g2b8 torchrun --nproc_per_node=2 train.py --batch_size=8
run g2b8fsdp torchrun --nproc_per_node=2 train.py --batch_size=8 --fsdp=true

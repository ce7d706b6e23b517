#!/usr/bin/env bash
# On nvidia-h200-x2 (issue 25), chained calls while the machine is warm:
#   bash dev/gpu/two_gpu.sh sft     random 0.5B weights: train.py at 16 rows per GPU on one GPU, then DDP on two (the
#                                   global batch doubles: tokens/s is the figure), then FSDP2 on two; ~5 min
#   bash dev/gpu/two_gpu.sh grpo    the real model (after the 8 device_append.sh calls and device_convert.sh): 20 GRPO
#                                   steps of configs/gsm8k_qwen05b_grpo.py on one GPU, then the same global batch on
#                                   two (each samples 16 of the 32 problems); step time, rollouts/s, rewards side by side
set -o pipefail
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
M=$HOME/real_model/qwen2.5-coder-0.5b-instruct
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case ${1:-sft} in
sft)
  python3 -c "import sys, torch; sys.path.insert(0, '.'); import bench; bench.get_model('0.5b', 'cuda', torch.bfloat16, '/dev/shm/r05')" >/dev/null 2>&1
  A="configs/gsm8k_qwen05b.py --init_from=/dev/shm/r05 --batch_size=16 --grad_accum=1 --max_iters=60 --log_interval=10 --eval_interval=1000 --eval_samples=0 --save_interval=1000 --keep_last=1"
  run() { echo "== $*" | tee -a $OUT/two_gpu_sft.log
    timeout 170 "$@" --out_dir=/dev/shm/sft 2>&1 | grep "^step [0-9]*/\|done\|processes\|rror" | tee -a $OUT/two_gpu_sft.log
    rm -rf /dev/shm/sft; }
  run python3 train.py $A
  run torchrun --nproc_per_node=2 train.py $A
  run torchrun --nproc_per_node=2 train.py $A --fsdp=true ;;
grpo)
  A="configs/gsm8k_qwen05b_grpo.py --init_from=$M --max_iters=20 --eval_interval=1000 --save_interval=1000"
  for launch in "python3" "torchrun --nproc_per_node=2"; do
    echo "== $launch rl.py $A" | tee -a $OUT/two_gpu_grpo.log
    timeout 280 $launch rl.py $A --out_dir=/dev/shm/grpo 2>&1 | grep "^step \|done\|processes\|rror" | cut -c1-400 \
      | tee -a $OUT/two_gpu_grpo.log
    cp /dev/shm/grpo/metrics.jsonl $OUT/two_gpu_grpo_$(echo $launch | wc -w).jsonl; rm -rf /dev/shm/grpo
  done ;;
esac

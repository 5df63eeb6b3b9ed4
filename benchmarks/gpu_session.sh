#!/usr/bin/env bash
# The GPU measurements still owed (issues 9 and 10), each part under 10 minutes on one H100, results in $OUT.
# Run `bash benchmarks/get_wheels.sh` first where there is a package index, carry wheels/, then on the GPU:
#   bash benchmarks/gpu_setup.sh && bash benchmarks/gpu_session.sh zero     # ZeRO-2/3 LoRA: train, merge, chat
#   bash benchmarks/gpu_session.sh bench7b                                  # 7B shape: packing (varlen) vs HF
#   bash benchmarks/gpu_session.sh benchqwen                                # Qwen1.5-4B shape, clean baseline
set -euo pipefail
part=${1:?"part: zero | bench7b | benchqwen | compile | sweep | data"}
OUT=${OUT:-out}
mkdir -p "$OUT" work
log() { echo "== $*" | tee -a "$OUT/commands.txt"; }
run() {  # a failing command is logged and the part goes on to the next; each one's wall time is logged.
  # LOG names the command's full log under work/logs (one per job when jobs run side by side)
  log "$*"
  local start=$SECONDS full=work/logs/${LOG:-last}.log
  mkdir -p work/logs
  "$@" > "$full" 2>&1 || echo "FAILED (exit $?): $*" >> "$full"
  echo "-- $((SECONDS - start)) s: $*" >> "$full"
  tail -n 25 "$full" | tee -a "$OUT/$part.log"
}
lora_on_one_gpu() {  # MODEL STRATEGY STEPS: a LoRA run under DeepSpeed on GPU 0, its merge, one answer
  local model=$1 s=$2 steps=$3 LOG=$1-$2
  run llavatune train tiny-lora model=work/$model data=work/shapes/qa.json images=work/shapes steps=$steps \
    batch_size=8 precision=bf16 gradient_checkpointing=true save_every=0 out=work/$model-$s --gpus 0 --strategy $s
  cp work/$model-$s/metrics.jsonl "$OUT/$model-$s-metrics.jsonl" || true
  run llavatune merge work/$model-$s --out work/$model-$s-merged
  run llavatune chat work/$model-$s-merged --image work/shapes/images/shape_00000.png \
    --prompt "What colour is the shape? Answer with one word."
}

case $part in
zero)  # issue 9: DeepSpeed ZeRO-2 and ZeRO-3 LoRA on one GPU, the tiny model and a 1B-class shape; the two
       # strategies side by side (one card holds both), the 1.8B shape built meanwhile (on the GPU: 21 s, 133 s
       # on the CPU)
  [ -d work/shapes ] || run llavatune data synth --kind shapes --n 200 --out work/shapes
  [ -d work/tiny ] || run llavatune build --preset tiny --out work/tiny
  ( [ -d work/r18 ] || LOG=build-r18 run llavatune build --preset internlm2-1.8b --dtype bfloat16 --device cuda \
      --out work/r18 ) &
  lora_on_one_gpu tiny zero2 200 & lora_on_one_gpu tiny zero3 200 &
  wait
  lora_on_one_gpu r18 zero2 20 & lora_on_one_gpu r18 zero3 20 &
  wait
  ;;
bench7b)  # issue 10: packing (torch's varlen kernel) and checkpointing fitted to the baseline's peak; same run each
  run llavatune bench train --shape llava15-7b --batch-size 16 --steps 5 --lengths llava665k packing=true \
    --out "$OUT/7b-665k-packed.json"
  run llavatune bench train --shape llava15-7b --batch-size 16 --steps 5 --lengths llava665k packing=true \
    checkpoint_layers=auto --out "$OUT/7b-665k-packed-auto.json"
  run llavatune bench train --shape llava15-7b --batch-size 16 --steps 5 checkpoint_layers=auto \
    --out "$OUT/7b-fixed-auto.json"
  ;;
data)  # data_workers on a GPU host: how many workers keep a cheap model fed from 640x480 JPEGs
  run python benchmarks/data_workers.py --work work/dw --workers 0 1 2 4
  cp work/dw/data_workers.json "$OUT/data-workers.json"
  ;;
benchqwen)  # issue 10: the Qwen1.5-4B baseline measured before Liger patches anything (bench runs it first)
  run llavatune bench train --shape qwen15-4b --batch-size 6 --steps 8 lora_r=4 "lora_targets=[q_proj,v_proj]" \
    --out "$OUT/qwen-4b.json"
  run llavatune bench train --shape qwen15-4b --batch-size 6 --steps 8 lora_r=4 "lora_targets=[q_proj,v_proj]" \
    checkpoint_layers=auto --out "$OUT/qwen-4b-auto.json"
  ;;
compile)  # issue 10: regional torch.compile on the 7B shape (timed out at 60 s on the tiny shape once; on 2 CPU
          # cores the tiny shape compiles in ~20 s with varying lengths), enough steps to see past the compile
  run timeout 540 llavatune bench train --shape llava15-7b --batch-size 16 --steps 12 --baseline none compile=true \
    --out "$OUT/7b-fixed-compile.json"
  ;;
sweep)  # issue 10: how cost grows with sequence length and batch, ours and HF side by side
  for len in 1024 2048; do
    run llavatune bench train --shape llava15-7b --batch-size 4 --steps 3 --lengths max max_length=$len \
      --out "$OUT/7b-max$len-b4.json"
  done
  for b in 4 8; do
    run llavatune bench train --shape llava15-7b --batch-size $b --steps 3 --out "$OUT/7b-fixed-b$b.json"
  done
  ;;
*) echo "unknown part $part: zero | bench7b | benchqwen | compile | sweep | data" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/$part.log"

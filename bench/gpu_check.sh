#!/usr/bin/env bash
# The GPU check: what a one-GPU machine must run before multi-GPU training is trusted. One summary line per item.
#
#   bash bench/gpu_check.sh            # on a GPU machine (~6-8 min on an H100/H200, most of it torch.compile)
#   bash bench/gpu_check.sh --dry-run  # the same items on the CPU with a tiny model, to check the script itself
#
# Items: (1) one process, amp_bf16 + --torchcompile; (2) pure bf16 + --torchcompile; (3) evaluation during
# training (zero-shot + retrieval every 4 steps); (4) torchrun --nproc_per_node 1: a NCCL group (cpu:gloo +
# cuda:nccl) through full steps, evaluation and a checkpoint; (5) bench/gpu_step.py (samples/s, MFU).
# Logs: $GPU_CHECK_DIR (default /tmp/gpu_check). Exit status: the number of failed items.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_DIR:-/tmp/gpu_check}
rm -rf "$OUT" && mkdir -p "$OUT"
if [ "${1:-}" = "--dry-run" ]; then
  DEVICE=cpu MODEL=SuperCLIP-Tiny BATCH=8 STEPS=4 IMAGES=24 SIZE=64 WORKERS=0
  STEP_ARGS="--device cpu --model SuperCLIP-Tiny --batch-size 8 --steps 2 --warmup 1"
else
  DEVICE=cuda MODEL=SuperCLIP-ViT-B-16 BATCH=128 STEPS=20 IMAGES=512 SIZE=224 WORKERS=8
  STEP_ARGS="--model SuperCLIP-ViT-B-16 --batch-size 256 --steps 20"
fi
$PY bench/eval_data.py "$OUT/eval" --images "$IMAGES" --image-size "$SIZE" >/dev/null || exit 1
COMMON=(--dataset-type synthetic --train-num-samples $((BATCH * STEPS)) --batch-size "$BATCH" --model "$MODEL"
        --device "$DEVICE" --workers "$WORKERS" --logs "$OUT/logs" --log-every-n-steps 1 --no-progress --lr 1e-4
        --warmup 2)
EVAL=(--imagenet-val "$OUT/eval/zeroshot" --zeroshot-steps 4 --val-data "$OUT/eval/val.tsv" --val-steps 4)
failed=0

summary() {  # name, log, run folder: one line from the run's metrics
  local name=$1 rc=$2 log=$3 run=$4
  if [ "$rc" -ne 0 ]; then
    echo "FAIL $name: exit $rc; $(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-200) (log $log)"
    failed=$((failed + 1))
    return
  fi
  $PY - "$name" "$run" <<'EOF'
import json, sys
name, run = sys.argv[1], sys.argv[2]
lines = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
steps = [m for m in lines if "loss" in m]
evals = [m for m in lines if "imagenet-zeroshot-val-top1" in m or "val/image_retrieval_recall@1" in m]
last, sps = steps[-1], sorted(m["samples_per_s"] for m in steps[1:]) or [0]
extra = f"; first step {steps[0]['compile_seconds']:.1f} s" if "compile_seconds" in steps[0] else ""
ev = (f"; {len(evals)} evaluations, zero-shot top1 {evals[-1].get('imagenet-zeroshot-val-top1', float('nan')):.3f}, "
      f"R@1 {evals[-1].get('val/image_retrieval_recall@1', float('nan')):.3f}") if evals else ""
print(f"PASS {name}: {last['step']} steps, loss {steps[0]['loss']:.3f} -> {last['loss']:.3f}, "
      f"{sps[len(sps) // 2]:.0f} samples/s (median){extra}{ev}")
EOF
}

run_train() {  # name, then extra flags
  local name=$1; shift
  local log="$OUT/$name.log"
  $PY -m superclip train "${COMMON[@]}" --name "$name" "$@" >"$log" 2>&1
  summary "$name" $? "$log" "$OUT/logs/$name"
}

run_train amp_bf16-compile --precision amp_bf16 --torchcompile
run_train bf16-compile --precision bf16 --torchcompile
run_train eval-during-training --precision amp_bf16 "${EVAL[@]}"

log="$OUT/torchrun-1proc.log"
$PY -m torch.distributed.run --standalone --nproc_per_node 1 -m superclip -- train "${COMMON[@]}" --name torchrun-1proc \
  --precision amp_bf16 --save-every-n-steps 4 "${EVAL[@]}" >"$log" 2>&1
rc=$?
if [ "$rc" -eq 0 ] && ! ls "$OUT/logs/torchrun-1proc/checkpoints/step_4.pt" >/dev/null 2>&1; then rc=99; fi
summary torchrun-1proc-group $rc "$log" "$OUT/logs/torchrun-1proc"

log="$OUT/gpu_step.log"
$PY bench/gpu_step.py $STEP_ARGS >"$log" 2>&1
rc=$?
if [ "$rc" -eq 0 ]; then
  $PY - "$log" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
r = json.loads(text[text.index("{"):])
l1, l0 = r["lambda=1"], r["lambda=0"]
mfu = f", MFU {100 * l1['mfu_datasheet']:.1f} % of datasheet / {100 * l1['mfu_measured_matmul']:.1f} % of measured matmul" \
    if "mfu_datasheet" in l1 else ""
print(f"PASS gpu_step: {r['model']} batch {r['batch_size']} on {r['gpu'] or r['device']}: λ=1 {l1['samples_per_s']:.0f} "
      f"samples/s, λ=0 {l0['samples_per_s']:.0f} (class term x{r['cls_overhead']:.3f}){mfu}")
EOF
else
  echo "FAIL gpu_step: exit $rc; $(tail -n 1 "$log" | cut -c1-200) (log $log)"
  failed=$((failed + 1))
fi
echo "gpu_check: $failed failed (logs in $OUT)"
exit $failed

#!/usr/bin/env bash
# The accelerator benchmarks of issues 12 and 14 in one run (a few minutes on one H100/H200-class GPU).
#
#   bash experiments/bench_accelerator.sh            # on a GPU machine (JAX with CUDA; torch with CUDA for part 3)
#   bash experiments/bench_accelerator.sh --smoke    # tiny sizes on CPU: checks that every part runs
#
# Prints, and writes as JSON under ${OUT:-/tmp/diffax_bench_accelerator}/:
#   1. train steps/s at batch 128, fp32 and bf16 (compile time separate, XLA temp + device peak memory)
#      goal: >= 40 steps/s in bf16                                     (experiments/bench_train.py)
#   2. DDPM 1000-step sampling of 256 CIFAR-10 images (goal <= 10 s), and FID feature extraction
#      (InceptionV3, random weights) in images/s                       (experiments/bench_sampling.py)
#   3. diffax vs torch (diffusers UNet2DModel on CUDA): forward, train step, DDIM 5 steps, batch 8 and 32,
#      fp32 and bf16 (torch autocast)                                   (experiments/bench_vs_torch.py)
# Each part is independent: a failing part is reported and the others still run.
set -u
cd "$(dirname "$0")/.."
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
OUT_DIR="${OUT:-${TMPDIR:-/tmp}/diffax_bench_accelerator}"
mkdir -p "$OUT_DIR"
python -c "import jax; print('jax', jax.__version__, jax.default_backend(), jax.devices())"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>/dev/null || echo "torch: not installed (part 3 skipped)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true

status=0
run() {  # run NAME CMD...: the table to stdout, the JSON line to $OUT_DIR/NAME.json
  local name=$1; shift
  echo; echo "=== $name: $*"
  local t0=$SECONDS
  if "$@" --json > "$OUT_DIR/$name.json" 2> "$OUT_DIR/$name.err"; then
    python - "$OUT_DIR/$name.json" <<'EOF'
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
for key in ("meta", "results", "rows", "unet_rows", "fid_rows"):
    if key in d:
        v = d[key]
        for r in (v if isinstance(v, list) else [v]):
            print(key, json.dumps(r))
EOF
  else
    echo "FAILED ($name); last lines of $OUT_DIR/$name.err:"; tail -5 "$OUT_DIR/$name.err"; status=1
  fi
  echo "($name took $((SECONDS - t0)) s)"
}

if [[ $SMOKE == 1 ]]; then
  run train python experiments/bench_train.py --models unet --quick --batch 2 --dtypes float32,bfloat16
  run sampling python experiments/bench_sampling.py --batch-sizes --unet --unet-batch 2 --unet-steps 4 --unet-ch 32 \
      --unet-dtypes float32,bfloat16 --fid --fid-batch 2 --fid-input-size 75 --repeats 1
  run vs_torch python experiments/bench_vs_torch.py --quick
else
  run train python experiments/bench_train.py --models unet --batch 128 --repeats 20 --dtypes float32,bfloat16
  run sampling python experiments/bench_sampling.py --batch-sizes --unet --unet-batch 256 --unet-steps 1000 \
      --unet-dtypes float32,bfloat16 --fid --fid-batch 250 --repeats 3
  run vs_torch python experiments/bench_vs_torch.py --batch-sizes 8 32 --repeats 10 --ddim-steps 5
  run vs_torch_bf16 python experiments/bench_vs_torch.py --batch-sizes 32 128 --repeats 10 --ddim-steps 5 --dtype bfloat16
fi
echo; echo "JSON in $OUT_DIR/; exit status $status"
exit $status

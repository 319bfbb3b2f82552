#!/usr/bin/env bash
# One run on a lent GPU machine (an H200 with the NVIDIA driver, nvcc 13 and a Python
# with PyTorch, torchvision and the CUDA 13 libraries; no Rust): the GPU parity tests,
# `vitrine bench train` / `bench embed` and the PyTorch peer, side by side.
#
# Prepare here (no GPU needed), then carry the bundle (under the 64 MiB carry limit):
#   scripts/build-cuda --tests        # writes target/cuda/bundle.tar.xz
#   run: bash benches/gpu/run-on-device.sh   carry: ["target/cuda/bundle.tar.xz"]
#
# Writes under $OUT: nvidia-smi.txt, ldd.txt, cuda-tests.txt, vitrine-*.json,
# torch.json, summary.md (and each step's stderr beside it). A failing step is recorded
# and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
python=${PYTHON:-python3}
steps=${STEPS:-10}
backbone=${BACKBONE:-resnet50}
size=${IMAGE_SIZE:-224}
batch=${BATCH:-32}

log() { echo "== $*" | tee -a "$out/summary.md"; }

bin=/tmp/vitrine-gpu
mkdir -p "$bin"
if [[ -f target/cuda/bundle.tar.xz ]]; then
    tar -C "$bin" -xJf target/cuda/bundle.tar.xz
else
    cp target/cuda/vitrine target/cuda/cuda-tests "$bin"/
fi

nvidia-smi >"$out/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv >>"$out/summary.md" 2>&1

# The CUDA 13 libraries of the Python environment's wheels (nvidia/cu13/lib for CUDA
# 13's; one lib folder per package for older ones); the driver's libcuda is the system's.
nvidia_libs=$("$python" - <<'EOF'
import os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
dirs = set()
for root in nvidia.__path__:
    for d, _, files in os.walk(root):
        if any(".so" in f for f in files) and os.path.basename(d) == "lib":
            dirs.add(d)
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH=${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >"$out/ldd.txt"
ldd "$bin/vitrine" >>"$out/ldd.txt" 2>&1

log "tests/cuda.rs"
VITRINE_REQUIRE_CUDA=1 timeout 300 "$bin/cuda-tests" --test-threads=1 >"$out/cuda-tests.txt" 2>&1
echo "exit $? — $(grep -E '^test result' "$out/cuda-tests.txt" | tail -1)" | tee -a "$out/summary.md"

for what in train embed; do
    log "vitrine bench $what"
    timeout 240 "$bin/vitrine" bench "$what" --device cuda:0 --backbone "$backbone" \
        --image-size "$size" --batch "$batch" --steps "$steps" --json \
        >"$out/vitrine-$what.json" 2>"$out/vitrine-$what.stderr"
    echo "exit $?: $(cat "$out/vitrine-$what.json")" | tee -a "$out/summary.md"
done

log "torch peer"
timeout 300 "$python" benches/peers/torch_triplet_step.py --device cuda --backbone "$backbone" \
    --image-size "$size" --batch "$batch" --steps "$steps" --json \
    >"$out/torch.json" 2>"$out/torch.stderr"
echo "exit $?" | tee -a "$out/summary.md"

"$python" - "$out" <<'EOF' | tee -a "$out/summary.md"
import json, os, sys
out = sys.argv[1]
def lines(name):
    try:
        return [json.loads(l) for l in open(os.path.join(out, name)) if l.startswith("{")]
    except OSError:
        return []
rows = []
for what, unit in [("train", "triplets_per_s"), ("embed", "images_per_s")]:
    for r in lines(f"vitrine-{what}.json"):
        rows.append((f"vitrine {what} (fp32)", r.get(unit)))
for r in lines("torch.json"):
    unit = "triplets_per_s" if r["bench"] == "train" else "images_per_s"
    rows.append((f"torch {r['bench']} ({r['precision']})", r.get(unit)))
print("\n| run | triplets/s (train) or images/s (embed) |\n|---|---|")
for name, v in rows:
    print(f"| {name} | {v:.1f} |" if isinstance(v, (int, float)) else f"| {name} | n/a |")
EOF

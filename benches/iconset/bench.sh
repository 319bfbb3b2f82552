#!/usr/bin/env bash
# The quality tables of README's "Benchmark: real artwork": raw pixels, the untrained
# network, then each recipe trained for the same wall-clock budget and evaluated on the
# test split (DeepFashion's protocol), one after another on this machine. One script for
# both sets: the phosphor set and the cross-artist set share the recipes.
#
#   benches/iconset/bench.sh DATA [BUDGET] [RECIPE ...]
#
# DATA: a set made by benches/iconset/build.py (e.g. data/icons) or
# benches/crossartist/build.py (e.g. data/xartist). BUDGET: --time-limit (default 10m).
# RECIPE: files under benches/iconset/recipes/ (default: all of them); `default` is
# config.toml's defaults. Runs go to target/bench/<DATA's name>/<recipe>/ (replaced).
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:?usage: bench.sh DATA [BUDGET] [RECIPE ...]}
budget=${2:-10m}
shift $(( $# >= 2 ? 2 : $# ))
recipes=("$@")
if [ ${#recipes[@]} -eq 0 ]; then
    recipes=(default)
    for f in benches/iconset/recipes/*.toml; do recipes+=("$(basename "$f" .toml)"); done
fi
cargo build --release --locked --quiet
bin=target/release/vitrine
out="target/bench/$(basename "$data")"
mkdir -p "$out"
row() { # name seconds eval.json
    python3 - "$@" <<'PY'
import json, sys
name, secs, path = sys.argv[1:4]
r = json.load(open(path))
k = r["top_k"]
print(f"| {name} | {float(k['1']):.3f} | {float(k['20']):.3f} | {r['map_at_r']:.3f} | {secs} |")
PY
}
echo "| model | top-1 | top-20 | MAP@R | seconds |"
echo "|---|---|---|---|---|"
"$bin" eval --raw-pixels --data "$data" --json > "$out/raw.json"
row "raw pixels (cosine)" - "$out/raw.json"
for recipe in "${recipes[@]}"; do
    run="$out/$recipe"
    rm -rf "$run"
    config=()
    [ "$recipe" != default ] && config=(--config "benches/iconset/recipes/$recipe.toml")
    start=$(date +%s)
    "$bin" "${config[@]}" train --data "$data" --run "$run" --epochs 1000 \
        --time-limit "$budget" > "$run.log" 2>&1
    secs=$(( $(date +%s) - start ))
    if [ "$recipe" = default ]; then
        "$bin" eval --run "$run" --data "$data" --untrained --json > "$out/untrained.json"
        row "untrained ResNet" - "$out/untrained.json"
    fi
    "$bin" eval --run "$run" --data "$data" --json > "$run.json"
    row "$recipe" "$secs" "$run.json"
done

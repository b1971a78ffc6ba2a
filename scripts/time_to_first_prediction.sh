#!/usr/bin/env bash
# Seconds from `unlearnd serve` (a fresh home: trains, builds the verifier, calibrates, publishes) to the first
# 200 from GET /predict, for each source tree given (default: this one). Run on an idle machine:
#   bash scripts/time_to_first_prediction.sh [TREE ...]
set -euo pipefail
PY="${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}"
trees=("$@"); [ ${#trees[@]} -eq 0 ] && trees=("$(cd "$(dirname "$0")/.." && pwd)")
for tree in "${trees[@]}"; do
    home=$(mktemp -d); port=$((20000 + RANDOM % 20000)); rport=$((40000 + RANDOM % 20000))
    key="ulk_timing_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    t0=$(date +%s.%N)
    (cd "$tree" && UNLEARND_HOME="$home" UNLEARND_EMBEDDED_REDIS_PORT=$rport UNLEARND_BOOTSTRAP_ADMIN_KEY=$key \
        exec "$PY" -m app.cli serve --port $port > "$home/serve.log" 2>&1) &
    pid=$!
    until curl -sf -H "X-API-Key: $key" "127.0.0.1:$port/predict?sample_id=0" > /dev/null 2>&1; do
        kill -0 $pid 2> /dev/null || { echo "$tree: serve died"; tail -5 "$home/serve.log"; break; }
        sleep 0.2
    done
    t1=$(date +%s.%N)
    printf '%s: %.1f s to the first prediction (%s)\n' "$tree" "$(echo "$t1 - $t0" | bc)" "$(git -C "$tree" rev-parse --short HEAD)"
    kill -TERM $pid; wait $pid 2> /dev/null || true
    rm -rf "$home"
done

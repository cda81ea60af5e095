#!/usr/bin/env bash
# Train the recipes at once on a lent GPU machine, for MINUTES
# minutes each, and leave their best weights and logs in $OUT (see README.md
# beside this file for the whole procedure and the device tool's limits).
#
#   bash recipes/gpu/train.sh                 # on the device machine, via the device tool
#   MINUTES=0.5 DEVICE=cpu OUT=/tmp/o CT_BATCH=2 DPCL_BATCH=2 CT_EPOCH=4 DPCL_EPOCH=4 \
#     VALID_SIZE=2 WORKERS=0 DATA='../shared/data/librispeech-8k/*/' bash recipes/gpu/train.sh   # dry run here
#
# Each run keeps its recipe's model and learning rate; the batch is larger
# (a GPU step costs about the same for 4 or 16 mixtures) and an epoch holds
# more mixtures so that validation and the LR schedule see progress, not noise.
set -euo pipefail
cd "$(dirname "$0")/../.."
MINUTES=${MINUTES:-7}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-/tmp/runs}
OUT=${OUT:?set OUT to the folder that comes back}
DATA=${DATA:-.gpu/librispeech-8k/*/}
WORKERS=${WORKERS:-4}
MODELS=${MODELS:-convtasnet convtasnet-causal dpcl upit-lstm lstm-tasnet sudormrf}
INIT=${INIT:-1}  # 1: a model with shipped weights (models/NAME.safetensors) starts from them at half its recipe's LR
COMPILE=${COMPILE:-0}  # 1: sep train --set compile=true for the convolutional recipes (untried on the GPU machine)

if [ -d .gpu/wheels ] && ! python3 -c "import soundfile, soxr" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/wheels/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
mkdir -p "$RUNS" "$OUT"

batch() {  # per-model batch size on the GPU
  case "$1" in dpcl) echo "${DPCL_BATCH:-32}" ;; *) echo "${CT_BATCH:-16}" ;; esac
}
recipe() {  # the shipped dpcl counts 2 or 3 speakers: train it on from the mixed recipe
  if [ "$1" = dpcl ] && [ "$INIT" = 1 ]; then echo recipes/dpcl-mixed.toml; else echo "recipes/$1.toml"; fi
}
epoch() {
  case "$1" in dpcl) echo "${DPCL_EPOCH:-8000}" ;; *) echo "${CT_EPOCH:-8000}" ;; esac
}

pids=()
for m in $MODELS; do
  extra=()
  # compiling speeds up convolutions; the recurrent families are LSTM-bound (checkpoints/README.md)
  if [ "$COMPILE" = 1 ]; then case "$m" in convtasnet* | sudormrf*) extra+=(--set compile=true) ;; esac; fi
  # minutes on a GPU cannot retrain what CPU hours built, but they can train it on (stage D1 of
  # docs/experiments.md gained on clean and shifted speech at half the recipe's LR)
  if [ "$INIT" = 1 ] && [ -f "models/$m.safetensors" ]; then
    # sepcli's own recipe reader: the same TOML fallback and checks as `sep train`
    lr=$(python3 -c "import sys; from sepcli.training.config import read_recipe; print(read_recipe(sys.argv[1])[0]['lr'] / 2)" "$(recipe "$m")")
    extra+=(--init "models/$m.safetensors" --lr "$lr")
  fi
  python3 -m sepcli train --config "$(recipe "$m")" --out "$RUNS/$m" --force \
    --set "train=$DATA" --device "$DEVICE" --threads 2 --set "workers=$WORKERS" \
    --set "batch_size=$(batch "$m")" --set "epoch_size=$(epoch "$m")" --set "valid_size=${VALID_SIZE:-150}" \
    --max-minutes "$MINUTES" --set checkpoint_minutes=2 --set log_every=50 -q "${extra[@]}" \
    > "$RUNS/$m.out" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for m in $MODELS; do echo "== $m"; tail -n 4 "$RUNS/$m.out"; grep '"valid"' "$RUNS/$m/log.jsonl" | tail -n 3 || true; done
dirs=()
for m in $MODELS; do cp "$RUNS/$m.out" "$RUNS/$m/train.out"; dirs+=("$RUNS/$m"); done
python3 recipes/gpu/export.py "${dirs[@]}" --out "$OUT" || status=1
exit $status

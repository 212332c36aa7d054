#!/usr/bin/env bash
# The main job on the offline default (Fashion-MNIST from Debian's package):
# train the paper's CNN with CF-Convs and with 3x3 convs, then evaluate both.
# Sizes are kept small so the demo finishes in minutes on 2 cores; raise them with
#   TRAIN_LIMIT=55000 EPOCHS=3 make demo
set -euo pipefail
out=${1:-runs/demo}
train_limit=${TRAIN_LIMIT:-4096}
epochs=${EPOCHS:-2}
cfconv=${CFCONV:-.venv/bin/cfconv}

for model in cf spatial; do
  "$cfconv" train --config fashion_cnn --model "$model" --epochs "$epochs" \
    --train-limit "$train_limit" --out "$out/$model"
done
echo "demo runs in $out: test metrics in $out/{cf,spatial}/test_metrics.json"

#!/bin/bash
# airnet + softmax on the shared CIFAR-100 (not the official split), one tuning-free training run per budget:
# the README's command at 10 epochs, and shorter budgets for the accuracy-vs-minutes curve. A finished run's
# JSON is kept and skipped on a re-run. Usage: results/airnet-cpu/run.sh 10 [5 ...]
cd "$(dirname "$0")/../.."
out=results/airnet-cpu
for epochs in "$@"; do
  f=$out/airnet-e$epochs.json
  [ -s "$f" ] && continue
  start=$(date +%s)
  OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m training.train --dataset cifar100 --data-dir ../shared/data \
    --arch airnet --epochs $epochs --batch-size 512 --lr 0.2 --label-smoothing 0.2 --crop-pad 2 \
    --pad-mode reflect --summary-json $f.tmp > $out/airnet-e$epochs.log 2>&1 && mv $f.tmp $f
  echo "wall $(( $(date +%s) - start )) s (the command, data loading and the test evaluation included)" >> $out/airnet-e$epochs.log
done

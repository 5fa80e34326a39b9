#!/bin/bash
# fp32 against bf16 autocast on this CPU: cnn_bn4 + softmax, the CNN recipe, 5 epochs, seeds 0-2,
# interleaved (fp32, bf16, fp32, ...). A finished run's JSON is kept and skipped on a re-run.
cd "$(dirname "$0")/../.."
out=results/precision-cpu
for seed in 0 1 2; do
  for amp in fp32 bf16; do
    f=$out/cnn_bn4-$amp-seed$seed.json
    [ -s "$f" ] && continue
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m training.train --dataset cifar100 --data-dir ../shared/data \
      --arch cnn_bn4 --head softmax --optimizer adamw --lr 2e-3 --weight-decay 5e-4 --batch-size 128 \
      --epochs 5 --seed $seed --amp $amp --summary-json $f.tmp > $out/cnn_bn4-$amp-seed$seed.log 2>&1 \
      && mv $f.tmp $f
  done
done

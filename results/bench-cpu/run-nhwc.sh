#!/bin/bash
# bf16's own gain in the default layout: channels_last in fp32 beside channels_last in bf16, interleaved.
cd "$(dirname "$0")/../.."
out=results/bench-cpu/nhwc
for spec in cnn_base:256 cnn_bn4:256 airnet:512; do
  arch=${spec%%:*}; batch=${spec##*:}
  [ -s "$out/$arch/train_bench.csv" ] && continue
  .venv/bin/python -m tools.train_bench --data-dir ../shared/data --arch $arch --batch-size $batch \
    --variants fp32_channels_last,channels_last --steps 4 --repeats 3 --warmup 2 --out $out/$arch \
    > $out-$arch.log 2>&1
done

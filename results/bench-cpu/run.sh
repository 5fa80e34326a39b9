#!/bin/bash
# fp32 against bf16 training steps on this CPU, per backbone (softmax head, CIFAR-100): tools.train_bench's
# device_loader (fp32, NCHW), bf16 (NCHW) and channels_last (bf16, NHWC) variants, interleaved, medians
# with their spread. A finished backbone's table is kept and skipped on a re-run.
cd "$(dirname "$0")/../.."
out=results/bench-cpu
for spec in cnn_base:256 cnn_bn4:256 airnet:512 resnet18:64 vit_tiny:64 efficientnet_b0:64; do
  arch=${spec%%:*}; batch=${spec##*:}
  [ -s "$out/$arch/train_bench.csv" ] && continue
  .venv/bin/python -m tools.train_bench --data-dir ../shared/data --arch $arch --batch-size $batch \
    --variants device_loader,bf16,channels_last --steps 4 --repeats 3 --warmup 2 --out $out/$arch \
    > $out/$arch.log 2>&1
done

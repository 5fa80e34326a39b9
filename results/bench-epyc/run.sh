#!/bin/bash
# Does `--amp auto`'s bf16 pay on a CPU with avx512_bf16 but no AMX (a 2-core AMD EPYC, family 25 model 17)?
# fp32 beside bf16, both channels_last (the CPU default layout), interleaved, as results/bench-cpu/run-nhwc.sh.
cd "$(dirname "$0")/../.."
out=results/bench-epyc
lscpu | grep -E "Model name|Vendor ID|Flags" | sed 's/Flags:.*/avx512_bf16: '"$(grep -c avx512_bf16 /proc/cpuinfo)"' cpus, amx_bf16: '"$(grep -c amx_bf16 /proc/cpuinfo)"' cpus/' > $out/cpu.txt
for spec in cnn_base:256 cnn_vgg:128 airnet:512; do
  arch=${spec%%:*}; batch=${spec##*:}
  [ -s "$out/$arch/train_bench.csv" ] && continue
  OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m tools.train_bench --data-dir ../shared/data --arch $arch \
    --batch-size $batch --variants fp32_channels_last,channels_last --steps 4 --repeats 3 --warmup 2 \
    --out $out/$arch > $out/$arch.log 2>&1
done

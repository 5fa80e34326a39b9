#!/bin/bash
# The seed report's 50-epoch CNN (57.09% in ~24 GPU-minutes) against the wall time here: the study's
# cnn_base + softmax run (its searched config, 50 epochs on all 50,000 training images, the test set read
# once) again, seeds 0, 1 and 2 one after another, each alone on both cores of an otherwise idle machine (the
# study's run shared its core with a second run and tests). analysis.retrain keeps each finished run in
# runs/ and runs only the missing ones on a re-run; each run's log line gives its minutes.
# Usage: results/wall-cpu/run.sh
cd "$(dirname "$0")/../.."
out=results/wall-cpu
.venv/bin/python - <<'PY'
import json
chosen = json.load(open("results/study-cpu/stages/cifar100_cnns/retrain/chosen.json"))
job = next(j for j in chosen["jobs"] if j["label"].startswith("cnn_base-softmax-") and j["seed"] == 0)
chosen["jobs"] = [{**job, "seed": seed} for seed in (0, 1, 2)]
json.dump(chosen, open("results/wall-cpu/chosen.json", "w"), indent=1)
PY
start=$(date +%s)
OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m analysis.retrain $out/chosen.json --out $out --epochs 50 \
  --cpus-per-task 2 --data-dir ../shared/data >> $out/run.log 2>&1
echo "wall $(( $(date +%s) - start )) s (the command: Ray's start, data loading, the runs it ran, the test evaluations)" >> $out/run.log

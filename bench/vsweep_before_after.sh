#!/bin/bash
# A vectorized sweep (4 digits_mlp learning rates, 3 epochs) in two checkouts, interleaved,
# 3 repeats: wall time and each run's summary times. Each checkout needs its .venv.
#     BEFORE=/path/to/old/checkout AFTER=/path/to/new/checkout bench/vsweep_before_after.sh
set -u
for r in 1 2 3; do
  for side in BEFORE AFTER; do
    tree=${!side}
    out=$(mktemp -d)/sweep
    t0=$(date +%s.%N)
    (cd "$tree" && .venv/bin/python -m jaxtrain sweep digits_mlp \
        --grid optimizer.learning_rate=0.03,0.015,0.0075,0.00375 --set train.epochs=3 \
        --set logging.progress=none --vectorized --workdir "$out" > /dev/null 2>&1)
    t1=$(date +%s.%N)
    echo "$r $side wall=$(echo "$t1 - $t0" | bc) $(python3 -c "import json; t=json.load(open('$out/learning_rate=0.03/summary.json'))['time']; print(' '.join(f'{k}={v:.2f}' for k, v in t.items()))")"
    rm -rf "$(dirname "$out")"
  done
done

#!/bin/sh
# identity on held-out animal subjects (`--val`'s offset: the 5th to 14th held-out animals, none of `--full`'s),
# 12 prompts x 1 seed, at the shipped encoder's inference knobs (alpha = beta = 1.0); the floor once (run A).
# Run: ./bench.sh world floor,instantbooth & ./bench.sh folder instantbooth
cd /work/wt/h15w
export HF_HUB_OFFLINE=1 PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec /work/main/.venv/bin/python -m boothkit.cli.main bench --val --subjects animal=10 --methods "$2" \
    --set instantbooth.encoder=/tmp/h15w/ib-$1 --set instantbooth.alpha=1.0 --set instantbooth.beta=1.0 \
    --threads 1 --no-progress --out /tmp/h15w/bench-$1

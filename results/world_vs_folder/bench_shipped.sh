#!/bin/sh
# reference: the shipped encoder (all classes, 5,000 steps) on the same subjects and prompts
cd /work/wt/h15w
export HF_HUB_OFFLINE=1 PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec /work/main/.venv/bin/python -m boothkit.cli.main bench --val --subjects animal=10 --methods instantbooth \
    --set instantbooth.encoder=src/boothkit/assets/instantbooth/all --set instantbooth.alpha=1.0 \
    --set instantbooth.beta=1.0 --threads 1 --no-progress --out /tmp/h15w/bench-shipped

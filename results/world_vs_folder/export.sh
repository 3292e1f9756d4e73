#!/bin/sh
# the exported dataset: records 0..2999 of `--data world --class animal` with seed 0, as an imagefolder with masks
cd /work/wt/h15w
export HF_HUB_OFFLINE=1 PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec /work/main/.venv/bin/python -m boothkit.cli.main world export-dataset --out /tmp/h15w/animal-3000 -n 3000 \
    --class animal --seed 0

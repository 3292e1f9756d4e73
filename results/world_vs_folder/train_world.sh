#!/bin/sh
# (a) the world path: scenes rendered on the fly (condition: a second, "plain" render of the same glyph)
cd /work/wt/h15w
export HF_HUB_OFFLINE=1 PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec /work/main/.venv/bin/python -m boothkit.cli.main pretrain instantbooth --data world --class animal \
    --out /tmp/h15w/ib-world --steps 500 --batch 16 \
    --set lr=3e-4 --set lr_adapters=1e-4 --set lr_gamma=1e-3 --set object_weight=4 \
    --set heldout=32 --set validate_every=100 --set validation_images=0 --set checkpoint_every=250 \
    --set workers=1 --set seed=0

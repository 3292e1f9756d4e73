#!/bin/sh
# (b) the folder path: the same settings and seed on the exported imagefolder (condition: the target cut out by
# its mask file, then the same device-side condition augmentation)
cd /work/wt/h15w
export HF_HUB_OFFLINE=1 PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec /work/main/.venv/bin/python -m boothkit.cli.main pretrain instantbooth --data /tmp/h15w/animal-3000 --class animal \
    --out /tmp/h15w/ib-folder --steps 500 --batch 16 \
    --set lr=3e-4 --set lr_adapters=1e-4 --set lr_gamma=1e-3 --set object_weight=4 \
    --set heldout=32 --set validate_every=100 --set validation_images=0 --set checkpoint_every=250 \
    --set workers=1 --set seed=0

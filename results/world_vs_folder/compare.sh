#!/bin/sh
# paired differences (B - A) on the shared subjects
cd /work/wt/h15w
export HF_HUB_OFFLINE=1 PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
B="/work/main/.venv/bin/python -m boothkit.cli.main compare"
echo '$ boothkit compare bench-world:instantbooth bench-folder:instantbooth   # folder - world'
$B /tmp/h15w/bench-world:instantbooth /tmp/h15w/bench-folder:instantbooth
echo; echo '$ boothkit compare bench-world:floor bench-world:instantbooth   # world - floor'
$B /tmp/h15w/bench-world:floor /tmp/h15w/bench-world:instantbooth
echo; echo '$ boothkit compare bench-world:floor bench-folder:instantbooth   # folder - floor'
$B /tmp/h15w/bench-world:floor /tmp/h15w/bench-folder:instantbooth
echo; echo '$ boothkit compare bench-world:floor bench-shipped:instantbooth   # shipped - floor'
$B /tmp/h15w/bench-world:floor /tmp/h15w/bench-shipped:instantbooth
echo; echo '$ boothkit compare bench-folder:instantbooth bench-shipped:instantbooth   # shipped - folder'
$B /tmp/h15w/bench-folder:instantbooth /tmp/h15w/bench-shipped:instantbooth

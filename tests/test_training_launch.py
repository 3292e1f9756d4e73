"""`accelerate launch` with 2 CPU processes (gloo): one concept folder, written once, by the main process.

(`--cpu` makes accelerate's launcher run a single process; `--multi_gpu` on a machine without GPUs starts
torchrun workers that fall back to the CPU and the gloo backend, which the script asserts.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap


SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from accelerate import PartialState
    from boothkit.methods import tune
    tune("lora", sys.argv[1], "animal", sys.argv[2], model=sys.argv[3], steps=4,
         config={"checkpoint_every": 2, "validation_images": 0, "batch_size": 1})
    state = PartialState()  # the state tune() trained in
    assert state.num_processes == 2 and state.backend == "gloo", (state.num_processes, state.backend)
""")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_with_gloo(tmp_path, tiny_model, subject_photos):
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    assert launcher, "accelerate CLI not found next to the interpreter"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "concept"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BOOTHKIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                           str(script), str(subject_photos), str(out), tiny_model],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["concept.json", "pytorch_lora_weights.safetensors",
                                                     "train_log.jsonl"]
    meta = json.loads((out / "concept.json").read_text())
    assert meta["training"]["steps"] == 4
    steps = [json.loads(x).get("step") for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == [1, 2, 3, 4]  # one log, from the main process only
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".concept")] == []

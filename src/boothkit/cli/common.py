"""Options shared by several commands."""

from __future__ import annotations

import typer

MODEL = typer.Option("world", "--model", "-m",
                     help="Base model: 'world' (shipped, offline), a local diffusers folder, or a hub id.")
DEVICE = typer.Option("auto", "--device", help="cuda, mps, cpu or auto.")
DTYPE = typer.Option("auto", "--dtype", help="fp32, fp16, bf16 or auto (fp32 on CPU, bf16/fp16 on GPU).")
SCHEDULER = typer.Option(None, "--scheduler",
                         help="Sampler: ddim, ddpm, pndm, euler, euler_a, heun, dpm++, dpm++_karras, unipc, or a "
                              "diffusers scheduler class name (default: the model's own).")

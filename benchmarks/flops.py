"""FLOPs and memory of each fine-tuning method on SD-1.5 and SDXL shapes, and InstantBooth against DreamBooth.

    python benchmarks/flops.py [--families sd15,sdxl,world] [--photos 4] > results/flops/flops.json

Counted by boothkit.bench.flops on meta-device models built from assets/reference_configs/ (no weights, no GPU;
about 3 minutes on one CPU core). For each family and method, with boothkit's default recipe of that method
(methods/<name>/config.py: batch, prior preservation, LoRA rank), at the family's native resolution:

- step FLOPs: UNet forward and backward (what autograd computes for what trains), VAE encoding and text encoding
  of the step's images and prompts, without and with the cache (training option `cache`: latents and frozen
  prompts' text computed once);
- bytes of weights, gradients and AdamW state in fp32, bf16 mixed precision and with 8-bit AdamW (activations
  not included);
- InstantBooth from photos to its first image (vision tower + heads on the photos, one 20-step guided image with
  the adapters) against full DreamBooth's (class images, training, one image), for boothkit's DreamBooth recipe
  and for the recipe of diffusers' DreamBooth README (800 steps of batch 1 + 1 class image, 200 class images
  sampled with the pipeline's defaults, 50 steps). Element-wise work (norms, activations, the optimizer) is not
  counted: a few percent.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def method_batches() -> dict[str, dict]:
    """Each method's default recipe: images per step through the UNet (prior images included), LoRA's rank."""
    from boothkit.methods import METHODS

    out = {}
    for name in ("lora", "dreambooth", "custom", "ti"):
        cfg = METHODS[name].config()
        prior = bool(getattr(cfg, "prior_preservation", False))
        out[name] = {"batch_size": cfg.batch_size, "prior_preservation": prior,
                     "unet_batch": cfg.batch_size * (2 if prior else 1), "steps": cfg.steps,
                     **({"rank": cfg.rank} if name == "lora" else {})}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="sd15,sdxl,world",
                    help="sd15, sdxl (reference configs) and/or world (the shipped world model's configs)")
    ap.add_argument("--photos", type=int, default=4, help="reference photos for InstantBooth (and DreamBooth)")
    args = ap.parse_args()

    from boothkit.bench import flops as F
    from boothkit.pipeline import world_path

    t0 = time.perf_counter()
    recipes = method_batches()
    out = {"benchmark": "flops", "command": "python benchmarks/flops.py " + " ".join(
               f"--{k} {v}" for k, v in vars(args).items()),
           "counted": "FlopCounterMode on meta-device models: matmuls, convolutions, attention; forward and "
                      "backward; 2 FLOPs per multiply-add; element-wise work not counted",
           "torch": torch.__version__, "recipes": recipes, "families": {}}
    for fam in args.families.split(","):
        source = str(world_path()) if fam == "world" else fam
        res = F.default_resolution(source)
        row = {"resolution": res, "parameters": F.parameter_counts(source),
               "sampling_step_flops_cfg": F.sampling_step_flops(source),
               "vae_encode_flops_per_image": F.vae_flops(source, "encode"),
               "vae_decode_flops_per_image": F.vae_flops(source, "decode"),
               "text_encoders_flops_per_prompt": F.text_encoder_flops(source),
               "vision_tower_flops_per_image": F.vision_tower_flops(source), "methods": {}}
        for method, r in recipes.items():
            rank = r.get("rank", 4)
            plain = F.train_step_flops(source, method, batch=r["unet_batch"], rank=rank)
            cached = F.train_step_flops(source, method, batch=r["unet_batch"], rank=rank, cached=True)
            row["methods"][method] = {
                "step_flops": plain.as_dict(), "step_flops_cached": cached.as_dict(),
                "cache_saves_percent": round(100 * (1 - cached.total / plain.total), 1),
                "bytes": {p: F.training_bytes(source, method, precision=p, rank=rank) for p in F.PRECISIONS}}
            if method in ("ti", "custom"):  # diffusers' scripts optimise the whole token-embedding matrix
                row["methods"][method]["bytes_whole_matrix_as_diffusers"] = {
                    p: F.training_bytes(source, method, precision=p, rank=rank, whole_matrix=True)
                    for p in F.PRECISIONS}
            print(f"{fam} {method}: {plain.total / 1e12:.3f} TFLOP/step, cached {cached.total / 1e12:.3f}",
                  flush=True, file=__import__("sys").stderr)
        row["instantbooth_vs_dreambooth"] = {
            "boothkit_recipe": F.instantbooth_vs_dreambooth(source, photos=args.photos),
            "diffusers_readme_recipe": F.instantbooth_vs_dreambooth(
                source, photos=args.photos,
                dreambooth={"steps": 800, "batch": 1, "prior": True, "class_images": 200, "class_sample_steps": 50})}
        out["families"][fam] = row
    out["machine"] = {"platform": platform.platform(), "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Throughput of the world-pretraining pieces on this machine: prints one JSON object.

    python benchmarks/pretrain_throughput.py [--quick] [--batches 8,32,64]

Measures scene rendering (samples/s on the training device), the data loader (sample + caption + tokenize, with
workers), and optimizer steps/s of each stage's model at several batch sizes (bf16 autocast on CUDA), with and
without torch.compile for the UNet.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def timed(fn, warm: int, n: int, device) -> float:
    for _ in range(warm):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--batches", default=None, help="UNet batch sizes, comma-separated (default: 256,512,1024; "
                                                      "--quick: 8)")
    args = ap.parse_args()
    from transformers import CLIPTokenizer

    from boothkit.pretrain.world import models
    from boothkit.pretrain.world.train import _pool, unet_loss
    from boothkit.world.atlas import load_atlas
    from boothkit.world.data import SceneStream, batch_of, scene_loader
    from boothkit.world.render import SceneRenderer

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    res = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "cpus": os.cpu_count()}
    tok = CLIPTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
    render = SceneRenderer(load_atlas(False), dev)
    big = 64 if args.quick else 1024
    stream = SceneStream(_pool(True), big, seed=0, tokenizer=tok)
    item = stream.make(0)
    sb = batch_of(item)
    res["render_samples_per_s"] = big * timed(lambda: render.render(sb), 2, 5 if args.quick else 20, dev)
    workers = 0 if args.quick else min(12, (os.cpu_count() or 2) - 2)
    loader = iter(scene_loader(SceneStream(_pool(True), 256, seed=1, tokenizer=tok), workers))
    next(loader)
    t = time.perf_counter()
    n = 3 if args.quick else 40
    for _ in range(n):
        next(loader)
    res[f"loader_samples_per_s_{workers}_workers_b256"] = 256 * n / (time.perf_counter() - t)
    ac = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    g = torch.Generator(dev).manual_seed(0)
    text = models.text_encoder().to(dev)
    alphas = models.noise_scheduler().alphas_cumprod.to(dev)
    batches = ([int(b) for b in args.batches.split(",")] if args.batches
               else [8] if args.quick else [256, 512, 1024])
    for compile_ in ([False, True] if args.compile else [False]):
        unet = models.unet().to(dev)
        if dev.type == "cuda":
            unet = unet.to(memory_format=torch.channels_last)
        fwd = torch.compile(unet) if compile_ else unet
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
        for b in batches:
            lat = torch.randn(b, 4, 16, 16, device=dev)
            with torch.no_grad(), ac:
                cond = text(input_ids=item["input_ids"][:b].to(dev) if tok else torch.randint(0, 49407, (b, 77), device=dev)).last_hidden_state
            cond = cond.float()

            def step():
                with ac:
                    loss, _ = unet_loss(fwd, lat, cond, alphas, g)
                opt.zero_grad()
                loss.backward()
                opt.step()
            t0 = time.perf_counter()
            sps = timed(step, 3 if not compile_ else 5, 3 if args.quick else 30, dev)
            res[f"unet_steps_per_s_b{b}{'_compiled' if compile_ else ''}"] = round(sps, 2)
            res[f"unet_samples_per_s_b{b}{'_compiled' if compile_ else ''}"] = round(sps * b, 1)
            print(json.dumps(res), flush=True)
    # the other stages at their recipe batch sizes
    vae = models.vae().to(dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    x = torch.rand(8 if args.quick else 256, 3, 64, 64, device=dev) * 2 - 1

    def vstep():
        with ac:
            rec = vae(x).sample.float()
            loss = (rec - x).abs().mean()
        opt.zero_grad(); loss.backward(); opt.step()
    res["vae_steps_per_s_b256"] = round(timed(vstep, 2, 3 if args.quick else 20, dev), 2)
    vision = models.image_encoder().to(dev)
    params = list(vision.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    bc = 8 if args.quick else 1024
    ids = torch.randint(0, 49407, (bc, 77), device=dev)
    xi = torch.rand(bc, 3, 64, 64, device=dev)

    def cstep():
        with ac:
            loss = vision(pixel_values=xi).image_embeds.float().mean() + text(input_ids=ids).pooler_output.float().mean()
        opt.zero_grad(); loss.backward(); opt.step()
    res["clip_steps_per_s_b1024"] = round(timed(cstep, 2, 3 if args.quick else 20, dev), 2)
    from boothkit.judge import Judge
    judge = Judge().to(dev)
    opt = torch.optim.AdamW(judge.parameters(), lr=1e-4)
    xj = torch.rand(8 if args.quick else 512, 3, 64, 64, device=dev)

    def jstep():
        with ac:
            loss = judge(xj).float().mean()
        opt.zero_grad(); loss.backward(); opt.step()
    res["judge_steps_per_s_b512"] = round(timed(jstep, 2, 3 if args.quick else 20, dev), 2)
    if dev.type == "cuda":
        res["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

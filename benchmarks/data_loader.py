"""Images/s of the pretraining data loader alone (boothkit.data), next to what a training step consumes today.

    python benchmarks/data_loader.py [--quick] [--out results/data_loader/data_loader.json]

Prints one JSON object. Loader: a folder of real photos (the DreamBench photos in shared/dreambench, copied as
they are, 687-2048 px JPEGs, and a copy shrunk to a 640 px short side, kohya captions) and the world, at
resolution 512 and 64, with 0, 1 and 2 DataLoader workers; each measurement takes the loader's batches after
one warm-up batch per worker (worker start-up excluded) for at least `--seconds`. Consumption: steps of
`boothkit pretrain instantbooth` on the world model at its default batch (everything a step does: world scenes
rendered by the loader, VAE, text encoder, vision tower, UNet forward and backward, optimizer), and a forward +
backward of the world UNet alone at the same batch. Also: the decode time per photo (boothkit.images.decode) and the
crop/resize time per record, which decide the loader's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DREAMBENCH = Path("/work/shared/dreambench")
if not DREAMBENCH.is_dir():
    DREAMBENCH = ROOT.parent / "shared" / "dreambench"
CLASSES = {"backpack": "backpack", "cat": "cat", "dog": "dog", "poop_emoji": "toy"}


def build_folder(root: Path, short_side: int | None) -> tuple[Path, dict]:
    """The DreamBench photos as a kohya folder, all captioned with the class noun "subject" (one class for all)."""
    from PIL import Image

    root.mkdir(parents=True)
    sizes = []
    for sub, cls in CLASSES.items():
        for f in sorted((DREAMBENCH / sub).glob("*.jpg")):
            dst = root / f"{sub}_{f.stem}.jpg"
            if short_side is None:
                shutil.copyfile(f, dst)
            else:
                with Image.open(f) as im:
                    s = short_side / min(im.size)
                    im.convert("RGB").resize((round(im.width * s), round(im.height * s)),
                                             Image.Resampling.LANCZOS).save(dst, quality=92)
            with Image.open(dst) as im:
                sizes.append(im.size)
            dst.with_suffix(".txt").write_text(f"a photo of a subject, a {cls}, on a table")
    px = [w * h for w, h in sizes]
    return root, {"photos": len(sizes), "mean_megapixels": round(sum(px) / len(px) / 1e6, 2),
                  "sides": f"{min(min(s) for s in sizes)}-{max(max(s) for s in sizes)} px"}


def loader_rate(source, resolution: int, workers: int, batch: int, seconds: float, uint8: bool = False) -> dict:
    """Images/s of build_loader's batches (after one warm-up batch per worker); in-process (0 workers) also the CPU
    time per image, which does not depend on what else the machine runs."""
    from boothkit.data import LoaderConfig, build_loader

    cfg = LoaderConfig(resolution=resolution, batch_size=batch, workers=workers, heldout=0, prefetch=2,
                       timeout=600.0, uint8=uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = iter(build_loader(source, cfg))
        for _ in range(max(1, workers)):
            next(it)
        n, t, cpu = 0, time.perf_counter(), time.process_time()
        while n < 3 or time.perf_counter() - t < seconds:
            next(it)
            n += 1
        dt, cpu = time.perf_counter() - t, time.process_time() - cpu
    del it
    row = {"images_per_s": round(n * batch / dt, 1), "batches_timed": n, "seconds": round(dt, 1)}
    if not workers:
        row["cpu_ms_per_image"] = round(cpu / (n * batch) * 1000, 1)
    return row


def per_record_ms(folder: Path, resolution: int) -> dict:
    """Mean ms per photo of decoding (boothkit.images.decode) and of prepare (crop, resize, flip, tensors)."""
    from boothkit.data import LoaderConfig
    from boothkit.data.loader import prepare
    from boothkit.data.record import Record
    from boothkit.images import decode

    files = sorted(folder.glob("*.jpg"))
    t = time.perf_counter()
    images = [decode(f) for f in files]
    dec = (time.perf_counter() - t) / len(files)
    cfg = LoaderConfig(resolution=resolution)
    t = time.perf_counter()
    for im in images:
        prepare(Record(im, "a", "k"), cfg, torch.Generator().manual_seed(0))
    prep = (time.perf_counter() - t) / len(files)
    return {"decode_ms": round(dec * 1000, 1), f"prepare_ms_at_{resolution}": round(prep * 1000, 1)}


def consumption(steps: int) -> dict:
    """What training steps consume today on this machine, in images/s."""
    from boothkit.methods.instantbooth.config import PretrainConfig
    from boothkit.pipeline import load_pipeline
    from boothkit.pretrain.encoders import pretrain_encoder

    out = {}
    cfg = PretrainConfig(steps=steps, heldout=0, checkpoint_every=0, validate_every=0, validation_images=0)
    marks = []
    with tempfile.TemporaryDirectory() as tmp:
        pretrain_encoder("instantbooth", Path(tmp) / "ib", data="world", class_noun="all",
                         settings={"steps": steps, "heldout": 0, "checkpoint_every": 0, "workers": 0,
                                   "validate_every": 0, "validation_images": 0},
                         on_step=lambda step, loss: marks.append(time.perf_counter()))
    timed = len(marks) - 1  # the first step warms up
    out["instantbooth_pretrain_step"] = {
        "what": "one step of `boothkit pretrain instantbooth` on the world model (CPU, fp32, the loader in the "
                "training process): world scenes rendered, condition augmentation, VAE encode, text encoder, vision "
                "tower, UNet forward+backward, AdamW",
        "batch_size": cfg.batch_size, "steps_timed": timed,
        "seconds_per_step": round((marks[-1] - marks[0]) / timed, 3),
        "images_per_s": round(timed * cfg.batch_size / (marks[-1] - marks[0]), 1)}
    pipe = load_pipeline("world", device="cpu", dtype="fp32", progress=False)
    unet = pipe.unet.train()
    b = cfg.batch_size
    lat = torch.randn(b, 4, 16, 16)
    ctx = torch.randn(b, 77, unet.config.cross_attention_dim)
    t_ = torch.randint(0, 1000, (b,))

    def step():
        unet(lat, t_, ctx).sample.square().mean().backward()

    step()
    n, t = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t < 5:
        step()
        n += 1
    dt = time.perf_counter() - t
    out["world_unet_forward_backward"] = {
        "what": "the world UNet alone (12.6 M parameters), forward + backward on 16x16x4 latents (64 px images), "
                "gradients for every UNet weight (full fine-tuning; InstantBooth's pretraining trains adapters "
                "only), CPU fp32, no optimizer", "batch_size": b,
        "seconds_per_step": round(dt / n, 3), "images_per_s": round(n * b / dt, 1)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer settings and seconds (a smoke run)")
    ap.add_argument("--seconds", type=float, default=8.0, help="minimum seconds per loader measurement")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    if not DREAMBENCH.is_dir():
        raise SystemExit(f"no DreamBench photos at {DREAMBENCH}")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    from boothkit.data import WorldOptions, open_source

    seconds = 2.0 if args.quick else args.seconds
    res = {"command": " ".join(["python", *sys.argv]),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                      f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
           "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
           "torch_threads_in_main": torch.get_num_threads(), "loader": []}
    workers = [0, 2] if args.quick else [0, 1, 2]
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"dreambench originals": build_folder(Path(tmp) / "orig", None),
                   "dreambench, 640 px short side": build_folder(Path(tmp) / "640", 640)}
        res["folders"] = {name: info for name, (_, info) in folders.items()}
        for name, (folder, _) in folders.items():
            res["folders"][name].update(per_record_ms(folder, 512))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sources = {name: open_source(str(folder), class_noun="subject") for name, (folder, _) in folders.items()}
            sources["world (class all, plain condition)"] = open_source("world", class_noun="all",
                                                                        world=WorldOptions())
        plan = [(name, r, 8) for name in list(sources)[:2] for r in (512, 64)]
        plan.append(("world (class all, plain condition)", 64, 8))
        if args.quick:
            plan = plan[:1] + plan[-1:]
        runs = [(name, r, b, w, False) for name, r, b in plan for w in workers]
        runs.append((plan[0][0], plan[0][1], plan[0][2], workers[-1], True))  # uint8 batches between processes
        for name, resolution, batch, w, uint8 in runs:
            row = {"source": name, "resolution": resolution, "workers": w, "batch_size": batch, "uint8": uint8,
                   **loader_rate(sources[name], resolution, w, batch, seconds, uint8)}
            res["loader"].append(row)
            print(json.dumps(row), flush=True)
    res["consumption"] = consumption(4 if args.quick else 12)
    res["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

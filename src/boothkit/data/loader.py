"""One loader for every source: DataLoader workers decode, mask, crop, flip and batch; the device does the rest.

Batches are dicts (B = cfg.batch_size, S = cfg.resolution, C = cfg.condition_size or S):
  pixels          [B, 3, S, S] float in [-1, 1] (uint8 0-255 with cfg.uint8; `to_device` converts on the device)
  mask            [B, 1, S, S] float in [0, 1] (1 = subject; all ones where the record has none)
  has_mask        [B] bool: False where `mask` is the whole image (a Segmenter may fill those rows on the device)
  condition       [B, 3, C, C] in [-1, 1], condition_mask [B, 1, C, C]: only from sources with a second photo
  captions, keys, class_nouns   list[str] (captions with the identifier in front of the class noun)
  original_size   [B, 2] long (height, width) of the decoded photo; crop_top_left [B, 2] long (top, left) of the
                  crop in the photo resized so its short side is S, as seen after the flip: SDXL's micro-conditioning
  skipped         {reason: count} of records replaced in this batch (unreadable, blank, bad_mask) or, for shards,
                  dropped from the stream since the previous batch of the same stream (no_caption, no_class_noun, ...)
  step, micro     the optimizer step and micro-step this batch is for

Map-style sources (folder, imagefolder, hf, world): batch k = step * grad_accum + micro is a pure function of
(seed, k, rank, world size, batch size): the records come from an epoch permutation seeded by (seed, epoch), each
epoch dealt out in whole global batches (world_size * batch_size records; the remainder waits for the next epoch),
rank r taking its slice, so two ranks never get the same record in one step; each record's crop and flip come from
a generator seeded by (seed, step, micro, rank, slot). A record that cannot be read is replaced by the next one of
the permutation (counted, warned once per file and process). So a run resumed at step s sees exactly the batches
an uninterrupted run would, with 0 or 16 workers. WebDataset shards: see `wds.py`; exact resume by replay.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from itertools import count

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from ..images import MAX_PIXELS, MIN_SIDE
from ..inputs import InputError
from ..training.config import DictConfig
from .base import MapSource
from .record import Record, Unusable
from .wds import WdsSource

CROPS = ("center", "random")
#: Pillow's two-step resize (reduce by an integer factor, then resample), its thumbnail()'s default: on a 2048 px
#: DreamBench photo cropped to 512 px it is twice as fast as a full bicubic resize, 0.75 levels (of 255) apart on
#: average (at 3.0 a 4x downscale is not reduced first, so nothing is gained)
REDUCING_GAP = 2.0
_AUGMENT, _PERMUTATION = 0xA06, 0x9E3  #: salts: the loader's generators never coincide with the training loop's


@dataclass
class LoaderConfig(DictConfig):
    """How records become batches (per process: every rank builds its own loader with its own rank)."""

    resolution: int = 512  #: side S of `pixels` and `mask`
    batch_size: int = 8  #: records per process per micro-step
    grad_accum: int = 1  #: micro-steps per optimizer step (batch k = step * grad_accum + micro)
    crop: str = "center"  #: center (the middle square of a photo that is not square) or random (a random square)
    flip: float = 0.5  #: probability of a left-right flip of each record
    condition_size: int = 0  #: side C of `condition` (0 = resolution); the source's condition photo, centre square
    seed: int = 0  #: decides the epoch order, the crops and the flips (and the shard order and shuffle buffer)
    heldout: int = 4  #: records kept out of training for validation grids (the world: held-out concepts' scenes)
    workers: int = 2  #: DataLoader worker processes (0 = in the training process)
    prefetch: int = 2  #: batches each worker prepares ahead
    timeout: float = 300.0  #: seconds a worker may take for one batch before the run stops with an error
    min_side: int = MIN_SIDE  #: smaller photos are skipped (counted as unreadable)
    max_pixels: int = MAX_PIXELS  #: larger photos are skipped (possible decompression bombs)
    shuffle_buffer: int = 1000  #: WebDataset: samples in each stream's shuffle buffer
    #: WebDataset: streams per process (0 = max(1, workers)); a multiple of `workers`; keep it fixed (and the
    #: buffer) to resume exactly; every process needs at least this many shards
    streams: int = 0
    #: pixels, condition and masks as uint8 0-255 (4x less to pass between processes and to the GPU); `to_device`
    #: converts them on the device to what the float batches hold
    uint8: bool = False

    def __post_init__(self):
        checks = [(self.resolution >= 8, "resolution must be at least 8"),
                  (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be at least 1"),
                  (self.crop in CROPS, f"crop must be one of {CROPS} (got {self.crop!r})"),
                  (0 <= self.flip <= 1, "flip must be in [0, 1]"),
                  (self.condition_size >= 0 and self.heldout >= 0, "condition_size and heldout must be >= 0"),
                  (self.workers >= 0 and self.prefetch >= 1, "workers must be >= 0 and prefetch >= 1"),
                  (self.streams >= 0 and self.shuffle_buffer >= 0, "streams and shuffle_buffer must be >= 0"),
                  (not (self.streams and self.workers) or self.streams % self.workers == 0,
                   f"streams ({self.streams}) must be a multiple of workers ({self.workers})")]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"loader config: {msg}")

    @property
    def n_streams(self) -> int:
        return self.streams or max(1, self.workers)


def generator(salt: int, *words: int) -> torch.Generator:
    """A CPU generator whose state depends only on its arguments (salted apart from the training loop's)."""
    state = np.random.SeedSequence([salt, *words]).generate_state(2, dtype=np.uint32)
    return torch.Generator("cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def augment_generator(seed: int, step: int, micro: int, rank: int, slot: int) -> torch.Generator:
    """The generator of one record's crop and flip: a pure function of where it lands."""
    return generator(_AUGMENT, seed, step, micro, rank, slot)


# --- one record -> tensors ---------------------------------------------------------------------------------------

def crop_window(width: int, height: int, size: int, crop: str, u: float) -> tuple[float, float, int, int, int, int]:
    """The square crop of a photo resized so its short side is `size` -> (x scale, y scale, resized width, resized
    height, top, left); u in [0, 1) places a random crop along the long side."""
    s = size / min(width, height)
    rw, rh = max(size, round(width * s)), max(size, round(height * s))
    if crop == "random":
        top, left = int(u * (rh - size + 1)), int(u * (rw - size + 1))
    else:
        top, left = int(round((rh - size) / 2)), int(round((rw - size) / 2))
    return rw / width, rh / height, rw, rh, top, left


def _square(im: Image.Image, size: int, sx: float, sy: float, top: int, left: int, resample) -> Image.Image:
    """The size x size window at (top, left) of `im` resized by (sx, sy), resampled from the original directly."""
    if im.size == (size, size):
        return im  # already the crop (world renders at their native size): no resampling
    box = (left / sx, top / sy, (left + size) / sx, (top + size) / sy)
    return im.resize((size, size), resample, box=box, reducing_gap=REDUCING_GAP)


def prepare(rec: Record, cfg: LoaderConfig, g: torch.Generator) -> dict:
    """One record -> its crop as uint8 arrays (crop, resize, flip) and facts; the random draws come from g (two
    numbers, always drawn). Arrays stay uint8 until `collate` converts the whole batch at once."""
    s = cfg.resolution
    u_crop, u_flip = torch.rand(2, generator=g).tolist()
    w, h = rec.image.size
    sx, sy, rw, rh, top, left = crop_window(w, h, s, cfg.crop, u_crop)
    image = _square(rec.image, s, sx, sy, top, left, Image.Resampling.BICUBIC)
    mask = _square(rec.mask, s, sx, sy, top, left, Image.Resampling.BILINEAR) if rec.mask is not None else None
    if u_flip < cfg.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mask is not None else None
        left = rw - left - s  # the crop's left edge as the flipped photo shows it
    out = {"pixels": np.asarray(image),  # [S, S, 3] uint8
           "mask": np.asarray(mask) if mask is not None else None,  # [S, S] uint8 or None
           "caption": rec.caption, "key": rec.key, "class_noun": rec.meta.get("class", ""),
           "original_size": (h, w), "crop_top_left": (top, left)}
    if rec.condition is not None:
        c = cfg.condition_size or s
        cw, ch = rec.condition.size
        csx, csy, _, _, ctop, cleft = crop_window(cw, ch, c, "center", 0.0)
        out["condition"] = np.asarray(_square(rec.condition, c, csx, csy, ctop, cleft, Image.Resampling.BICUBIC))
        cm = rec.condition_mask
        out["condition_mask"] = (np.asarray(_square(cm, c, csx, csy, ctop, cleft, Image.Resampling.BILINEAR))
                                 if cm is not None else None)
    return out


def _images(arrays: list[np.ndarray], uint8: bool) -> torch.Tensor:
    """[H, W, 3] uint8 arrays -> [B, 3, H, W]: uint8 as they are, or float in [-1, 1] (one pass over the batch)."""
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # [B, 3, H, W] view
    if uint8:
        return x.contiguous()
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)


def _masks(arrays: list[np.ndarray | None], side: int, uint8: bool) -> torch.Tensor:
    """[H, W] uint8 arrays (None: the whole image) -> [B, 1, H, W]: uint8 0-255, or float in [0, 1]."""
    full = np.full((side, side), 255, np.uint8)
    x = torch.from_numpy(np.stack([a if a is not None else full for a in arrays]))[:, None]
    return x if uint8 else x.to(torch.float32).div_(255.0)


def collate(items: list[dict], skipped: dict, step: int, micro: int, uint8: bool = False) -> dict:
    """Prepared records -> one batch dict (see the module docstring)."""
    side = items[0]["pixels"].shape[0]
    batch = {"pixels": _images([i["pixels"] for i in items], uint8),  # [B, 3, S, S]
             "mask": _masks([i["mask"] for i in items], side, uint8),  # [B, 1, S, S]
             "has_mask": torch.tensor([i["mask"] is not None for i in items], dtype=torch.bool),  # [B]
             "captions": [i["caption"] for i in items], "keys": [i["key"] for i in items],
             "class_nouns": [i["class_noun"] for i in items],
             "original_size": torch.tensor([i["original_size"] for i in items], dtype=torch.long),  # [B, 2]
             "crop_top_left": torch.tensor([i["crop_top_left"] for i in items], dtype=torch.long),  # [B, 2]
             "skipped": dict(skipped), "step": step, "micro": micro}
    if "condition" in items[0]:
        c = items[0]["condition"].shape[0]
        batch["condition"] = _images([i["condition"] for i in items], uint8)  # [B, 3, C, C]
        batch["condition_mask"] = _masks([i["condition_mask"] for i in items], c, uint8)  # [B, 1, C, C]
    return batch


def to_device(batch: dict, device: str | torch.device, non_blocking: bool = True) -> dict:
    """The batch's tensors on `device`; uint8 batches (LoaderConfig.uint8) become what the float loader gives:
    pixels and condition in [-1, 1], masks in [0, 1], converted on the device."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=non_blocking)
            if v.dtype == torch.uint8:
                v = v.float().div_(127.5).sub_(1.0) if k in ("pixels", "condition") else v.float().div_(255.0)
        out[k] = v
    return out


def batch_rows(batch: dict, index: slice) -> dict:
    """Some rows of a batch: its tensors and per-row lists sliced, the rest (skipped, step, micro) kept."""
    n = len(batch["captions"])
    return {k: v[index] if (torch.is_tensor(v) and v.dim() and v.shape[0] == n) or (isinstance(v, list) and len(v) == n)
            else v for k, v in batch.items()}


def micro_conditioning(batch: dict) -> torch.Tensor:
    """[B, 6] SDXL's (original h, w, crop top, left, target h, w) of each row (boothkit.families.micro_conditioning's
    order): the photo's size, the crop's place in the photo resized to the batch's side, that side."""
    b, s = batch["pixels"].shape[0], batch["pixels"].shape[-1]
    target = torch.tensor([[s, s]], dtype=torch.long).expand(b, 2)
    return torch.cat([batch["original_size"].cpu(), batch["crop_top_left"].cpu(), target], 1)


def count_skipped(counts: dict[str, int], batch: dict | None) -> None:
    """Add a batch's `skipped` counts (records the loader replaced or dropped, by reason; a bad record of a map-style
    source counts once per epoch) to `counts`."""
    for reason, n in ((batch or {}).get("skipped") or {}).items():
        counts[reason] = counts.get(reason, 0) + int(n)


def row_image(pixels: torch.Tensor) -> Image.Image:
    """One row's pixels [3, H, W] in [-1, 1] (a float batch's) -> RGB PIL."""
    a = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(a, "RGB")


_WARNED: set[str] = set()  #: records this process has already warned about


def _warn_skip(err: Unusable) -> None:
    msg = str(err)
    if msg not in _WARNED:
        _WARNED.add(msg)
        warnings.warn(f"skipped ({err.reason}): {msg}", stacklevel=3)


# --- map-style sources -------------------------------------------------------------------------------------------

class MapBatches(Dataset):
    """Item k = batch k of this rank (a whole batch per item: a worker decodes all of it)."""

    def __init__(self, source: MapSource, cfg: LoaderConfig, rank: int = 0, world_size: int = 1):
        self.source, self.cfg, self.rank, self.world_size = source, cfg, rank, world_size
        self.index = source.train_index(cfg.heldout)
        per_step = world_size * cfg.batch_size
        if len(self.index) < per_step:
            raise InputError(f"--data {source.spec}: {len(self.index)} training records (after holding out "
                             f"{cfg.heldout} for validation) cannot fill one batch of {cfg.batch_size} on each of "
                             f"{world_size} process(es); use a smaller batch or more data")
        self.batches_per_epoch = len(self.index) // per_step
        self._perm: tuple[int, torch.Tensor] | None = None
        self._bad: dict[int, Unusable] = {}  # source index -> why it cannot be read (per process: a cache)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order of training positions (the same on every rank and worker)."""
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(len(self.index), generator=generator(_PERMUTATION, self.cfg.seed,
                                                                                        epoch)))
        return self._perm[1]

    def positions(self, k: int) -> tuple[int, list[int]]:
        """Batch k of this rank -> (epoch, positions in that epoch's permutation)."""
        epoch, b = divmod(k, self.batches_per_epoch)
        first = (b * self.world_size + self.rank) * self.cfg.batch_size
        return epoch, list(range(first, first + self.cfg.batch_size))

    def _load(self, indices: list[int]) -> list[Record | Unusable]:
        kw = {"min_side": self.cfg.min_side, "max_pixels": self.cfg.max_pixels}
        todo = [i for i in indices if i not in self._bad]
        got = dict(zip(todo, self.source.load_many(todo, **kw))) if todo else {}
        for i, r in got.items():
            if isinstance(r, Unusable):
                self._bad[i] = r
        return [got.get(i, self._bad.get(i)) for i in indices]

    def records(self, k: int) -> tuple[list[Record], dict]:
        """Batch k's records, unusable ones replaced by the next usable position of the permutation.

        Counted once per epoch each: only the record at a slot's own position counts (one passed over while looking
        for a stand-in is counted when its own position comes)."""
        epoch, pos = self.positions(k)
        perm = self.permutation(epoch)
        n = len(self.index)
        recs = self._load([self.index[int(perm[p])] for p in pos])
        skipped: dict = {}
        for j, r in enumerate(recs):
            if isinstance(r, Unusable):
                skipped[r.reason] = skipped.get(r.reason, 0) + 1
            p = pos[j]
            while isinstance(r, Unusable):
                _warn_skip(r)
                p += 1
                if p - pos[j] >= n:
                    raise InputError(f"--data {self.source.spec}: no record can be read (the last: {r})")
                r = self._load([self.index[int(perm[p % n])]])[0]
            recs[j] = r
        return recs, skipped

    def batch(self, k: int) -> dict:
        recs, skipped = self.records(k)
        step, micro = divmod(k, self.cfg.grad_accum)
        items = [prepare(r, self.cfg, augment_generator(self.cfg.seed, step, micro, self.rank, j))
                 for j, r in enumerate(recs)]
        return collate(items, skipped, step, micro, self.cfg.uint8)

    def __getitem__(self, k: int) -> dict:
        return self.batch(k)


class _From(Sampler):
    """k, k+1, k+2, ... (endless: the training loop decides when to stop)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        return count(self.start)


# --- WebDataset shards -------------------------------------------------------------------------------------------

class StreamBatches(IterableDataset):
    """Batches of WebDataset streams, in the same order with any number of workers.

    Batch k comes from stream k mod n (n = cfg.n_streams), as that stream's (k div n)-th batch. The DataLoader asks
    its workers in turn, so worker w delivers batches k0 + w, k0 + w + W, ...: it owns the streams i with
    i = k0 + w (mod W) (n is a multiple of W) and runs them in that order.
    """

    def __init__(self, source: WdsSource, cfg: LoaderConfig, rank: int = 0, world_size: int = 1,
                 start_step: int = 0):
        self.source, self.cfg, self.rank, self.world_size = source, cfg, rank, world_size
        self.n = cfg.n_streams
        need = world_size * self.n
        if len(source.shards) < need:
            raise InputError(f"--data {source.spec}: {len(source.shards)} shard(s) for {world_size} process(es) x "
                             f"{self.n} stream(s) each; need at least {need} (write more, smaller shards, or use "
                             "fewer loader workers / streams)")
        self.exclude = {r.key for r in source.heldout(cfg.heldout)}
        self.k0 = start_step * cfg.grad_accum

    def stream_batches(self, i: int, first: int):
        """Batches first, first + 1, ... of stream i (replaying the earlier ones' samples without decoding)."""
        cfg, b = self.cfg, self.cfg.batch_size
        counts: dict = {}
        it = self.source.stream(rank=self.rank, world_size=self.world_size, index=i, streams=self.n, seed=cfg.seed,
                                buffer=cfg.shuffle_buffer, exclude=self.exclude, counts=counts)
        for _ in range(first * b):
            next(it)
        counts.clear()
        kw = {"min_side": cfg.min_side, "max_pixels": cfg.max_pixels}
        for p in count(first):
            step, micro = divmod(p * self.n + i, cfg.grad_accum)
            while True:
                group = [next(it) for _ in range(b)]
                recs: list = []
                for raw in group:
                    try:
                        recs.append(self.source.load(raw, **kw))
                    except Unusable as e:
                        counts[e.reason] = counts.get(e.reason, 0) + 1
                        _warn_skip(e)
                        recs.append(None)
                if any(r is not None for r in recs):
                    break
                warnings.warn(f"--data {self.source.spec}: all {b} samples of a batch of stream {i} were unusable; "
                              "took the next ones (a run resumed past this point does not replay it exactly)",
                              stacklevel=2)
            good = [r for r in recs if r is not None]
            # an unusable sample is stood in for by the next usable one of its batch (counted above)
            recs = [r if r is not None else good[j % len(good)] for j, r in enumerate(recs)]
            items = [prepare(r, cfg, augment_generator(cfg.seed, step, micro, self.rank, j))
                     for j, r in enumerate(recs)]
            yield collate(items, counts, step, micro, cfg.uint8)
            counts.clear()

    def __iter__(self):
        info = get_worker_info()
        w, workers = (info.id, info.num_workers) if info else (0, 1)
        if self.n % workers:
            raise InputError(f"{self.n} WebDataset streams cannot be shared by {workers} loader workers")
        own = [i for i in range(self.n) if i % workers == (self.k0 + w) % workers]
        # stream i's first batch at or after k0: k = k0 + ((i - k0) mod n), its (k div n)-th
        runs = {i: self.stream_batches(i, (self.k0 + (i - self.k0) % self.n) // self.n) for i in own}
        for k in count(self.k0 + w, workers):
            yield next(runs[k % self.n])


# --- entry points ------------------------------------------------------------------------------------------------

def _identity(x):
    return x


def _warn_masks(source, expect_segmenter: bool) -> None:
    rep = source.report
    if rep.without_mask and not expect_segmenter and not getattr(source, "has_condition", False):
        scope = " of the scanned" if rep.partial else ""
        warnings.warn(f"--data {source.spec}: {rep.without_mask}{scope} of {rep.usable} records have no mask "
                      "file/column or bbox; those without an alpha channel train with the whole image as the subject "
                      "mask (--segmenter names a model that cuts the subject out)", stacklevel=3)


def build_loader(source: MapSource | WdsSource, cfg: LoaderConfig, *, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, expect_segmenter: bool = False) -> DataLoader:
    """The DataLoader of process `rank` of `world_size`, starting at optimizer step `start_step` (resume).

    Iterate it for batches (endless: the training loop decides when to stop). expect_segmenter: the caller fills
    the rows without a mask on the device (`Segmenter.fill`), so no whole-image warning.
    """
    if not 0 <= rank < world_size:
        raise InputError(f"rank {rank} is not one of world size {world_size}'s processes")
    if isinstance(source, WdsSource):
        dataset, sampler = StreamBatches(source, cfg, rank, world_size, start_step), None
    else:
        dataset, sampler = MapBatches(source, cfg, rank, world_size), _From(start_step * cfg.grad_accum)
    _warn_masks(source, expect_segmenter)
    return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=cfg.workers, collate_fn=_identity,
                      pin_memory=torch.cuda.is_available(), prefetch_factor=cfg.prefetch if cfg.workers else None,
                      timeout=cfg.timeout if cfg.workers else 0, persistent_workers=False)


def validation_batch(source: MapSource | WdsSource, cfg: LoaderConfig) -> dict | None:
    """The held-out records (cfg.heldout of them) as one batch, centre-cropped, unflipped: the same every call.
    None when there are none."""
    recs = source.validation(cfg.heldout, min_side=cfg.min_side, max_pixels=cfg.max_pixels)
    if not recs:
        return None
    fixed = dataclasses.replace(cfg, crop="center", flip=0.0)
    items = [prepare(r, fixed, augment_generator(cfg.seed, 0, 0, 0, j)) for j, r in enumerate(recs)]
    return collate(items, {}, -1, 0, cfg.uint8)

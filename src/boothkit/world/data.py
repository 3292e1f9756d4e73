"""A deterministic stream of scene batches for training, shardable over data-loader workers.

Batch number `step` is a pure function of (seed, step): workers take the steps congruent to their id, so the
stream is the same with 0 or 16 workers, and a resumed run picks up exactly where it stopped. Workers sample
scenes and tokenize captions (cheap Python); pixels are drawn on the training device by SceneRenderer.
"""

from __future__ import annotations

import random
from itertools import count

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .concepts import Concept
from .render import SceneBatch
from .scenes import SceneSampler


class SceneStream(IterableDataset):
    """Yields dicts: SceneBatch fields, `input_ids` [B, 77] (if a tokenizer is given), `label` [B], `step`."""

    def __init__(self, pool: list[tuple[int, Concept]], batch_size: int, seed: int, start_step: int = 0,
                 tokenizer=None, **sampler_kwargs):
        self.pool, self.batch_size, self.seed, self.start_step = pool, batch_size, seed, start_step
        self.tokenizer = tokenizer
        self.sampler_kwargs = sampler_kwargs

    def make(self, step: int) -> dict:
        rng = random.Random(f"{self.seed}:{step}")
        sampler = SceneSampler(self.pool, **self.sampler_kwargs)
        scenes = [sampler.sample(rng) for _ in range(self.batch_size)]
        sb = SceneBatch.from_scenes(scenes)
        out = {f: getattr(sb, f) for f in sb.__dataclass_fields__}
        out["label"] = sb.concept[:, 0].clone()
        out["step"] = step
        if self.tokenizer is not None:
            out["input_ids"] = self.tokenizer([s.caption for s in scenes], padding="max_length", truncation=True,
                                              max_length=self.tokenizer.model_max_length,
                                              return_tensors="pt").input_ids
        return out

    def __iter__(self):
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info else (0, 1)
        for step in count(self.start_step):
            if step % n == wid:
                yield self.make(step)


def scene_loader(stream: SceneStream, workers: int) -> DataLoader:
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=4 if workers else None, persistent_workers=workers > 0)


def batch_of(item: dict) -> SceneBatch:
    return SceneBatch(*(item[f] for f in SceneBatch.__dataclass_fields__))

"""Generation for the app: one base pipeline, concept pipelines cached, a fresh scheduler for every request.

diffusers schedulers keep per-call state (timesteps, step index, solver history), so two requests sharing one
scheduler corrupt each other. Each request therefore runs on a shallow copy of the cached pipeline (same UNet,
VAE and text encoder weights, no extra memory) with its own scheduler made from the shared one's config.
Concept pipelines are loaded fresh from the base model and have the concepts applied once, then cached (LRU), so a
concept's weights never leak into the base pipeline or into another concept set.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
from collections import OrderedDict
from pathlib import Path

from .jobs import free_memory, is_out_of_memory
from .limits import RequestError
from .registry import MethodSpec
from .storage import Store

log = logging.getLogger("boothkit.app")

#: `<name>` in a prompt refers to the concept `name` of the library; `<name:0.7>` also sets its weight (the
#: strength of a LoRA concept's adapter or an E4T concept's weight offsets, as kohya's `<lora:name:0.7>`)
CONCEPT_REF = re.compile(r"<([a-z0-9][a-z0-9_-]{0,39})(?::([0-9]*\.?[0-9]+))?>")
MAX_WEIGHT = 2.0


def trigger_phrase(concept_dir: Path, row: dict) -> str:
    """What `<name>` in a prompt becomes: the concept's token and class noun, as its concept.json records them.

    concept.json is written by the method (boothkit.methods): the token is `tokens[0]` (or `identifier` / `token`),
    the class noun `class` (else the class noun the job was given). A token that already ends with the class noun
    is used alone.
    """
    try:
        meta = json.loads((concept_dir / "concept.json").read_text())
    except (OSError, ValueError):
        meta = {}
    tokens = meta.get("tokens") if isinstance(meta.get("tokens"), list) else []
    ident = next((str(v) for v in [*tokens[:1], meta.get("identifier"), meta.get("token")] if v), None)
    noun = str(meta.get("class") or meta.get("class_noun") or row["class_noun"])
    if not ident:
        return noun
    return ident if ident.split()[-1] == noun.split()[-1] else f"{ident} {noun}"


class Engine:
    """Loads the model once; generate() is safe to call from many threads (`slots` run at once)."""

    def __init__(self, store: Store, methods: dict[str, MethodSpec], model: str = "world", device: str | None = None,
                 dtype: str | None = None, slots: int = 1, cache_size: int = 2):
        self.store, self.methods, self.model = store, methods, model
        self.device, self.dtype = device, dtype
        self.cache_size = cache_size
        self._base = None
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self._load_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(slots)

    # -- pipelines --------------------------------------------------------------------------------------------
    def _load(self):
        from ..pipeline import load_pipeline

        return load_pipeline(self.model, device=self.device, dtype=self.dtype, progress=False)

    def base(self):
        with self._load_lock:
            if self._base is None:
                self._base = self._load()
            return self._base

    def native_size(self) -> int:
        from ..generate import native_size

        return native_size(self.base())

    def forget_concepts(self) -> None:
        """Drop cached concept pipelines (after a rename or delete changed what a name points at)."""
        with self._load_lock:
            self._cache.clear()

    def pipeline_for(self, concepts: list[dict], weights: list[float] | None = None):
        """The base pipeline, or a cached one with exactly these concepts applied at these weights (default 1)."""
        if not concepts:
            return self.base()
        weights = list(weights) if weights is not None else [1.0] * len(concepts)
        dirs = [self.store.concept_dir(c["name"]) for c in concepts]
        key = tuple((str(d), (d / "concept.json").stat().st_mtime_ns, w) for d, w in zip(dirs, weights, strict=True))
        self.base()
        with self._load_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            pipe = self._load()
            by_apply: dict[int, tuple] = {}
            for c, d, w in zip(concepts, dirs, weights, strict=True):
                spec = self.methods.get(c["method"])
                if spec is None:
                    raise RequestError(f"concept {c['name']!r} was made with method {c['method']!r}, which this "
                                       f"server does not have", 409)
                group = by_apply.setdefault(id(spec.apply), (spec.apply, [], []))
                group[1].append(d)
                group[2].append(w)
            try:
                for apply, ds, ws in by_apply.values():
                    weighted = {"weights": ws} if any(w != 1.0 for w in ws) else {}  # plain calls stay plain
                    pipe = apply(pipe, ds, **weighted) or pipe
            except ValueError as e:  # e.g. a concept made for another base model
                raise RequestError(f"could not load concepts {[c['name'] for c in concepts]}: {e}", 409) from e
            self._cache[key] = pipe
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return pipe

    # -- generation -------------------------------------------------------------------------------------------
    def resolve_prompt(self, prompt: str, names: list[str]) -> tuple[str, list[dict], list[float]]:
        """Replace each `<name>` / `<name:W>` with its concept's trigger phrase; -> (prompt for the model, concept
        rows, their weights).

        Concepts named in `names` or referenced in the prompt are used; each must exist and be mentioned, with one
        weight (0 to MAX_WEIGHT; 1 when not written).
        """
        given: dict[str, set[float]] = {}
        for n, w in CONCEPT_REF.findall(prompt):
            given.setdefault(n, set()).add(float(w) if w else 1.0)
        weight: dict[str, float] = {}
        for n, ws in given.items():
            if len(ws) > 1:
                raise RequestError(f"<{n}> is written with different weights {sorted(ws)}: one concept, one weight")
            (weight[n],) = ws
            if not 0 <= weight[n] <= MAX_WEIGHT:
                raise RequestError(f"<{n}:{weight[n]:g}>: a weight must be between 0 and {MAX_WEIGHT:g}")
        referenced = list(weight)
        wanted = list(dict.fromkeys(list(names) + referenced))
        rows = []
        for n in wanted:
            row = self.store.get_concept(n)
            if row is None:
                raise RequestError(f"no concept named {n!r} (the library has: "
                                   f"{[c['name'] for c in self.store.list_concepts()] or 'nothing yet'})", 404)
            if n not in referenced:
                raise RequestError(f"concept {n!r} is selected but the prompt does not mention <{n}>; write <{n}> "
                                   f"where the subject goes")
            rows.append(row)
        phrases = {r["name"]: trigger_phrase(self.store.concept_dir(r["name"]), r) for r in rows}
        weights = [weight[r["name"]] for r in rows]
        return CONCEPT_REF.sub(lambda m: phrases.get(m.group(1), m.group(0)), prompt), rows, weights

    def generate(self, prompt: str, *, concepts: list[str], n: int, seed: int, steps: int, guidance: float,
                 width: int | None, height: int | None, negative_prompt: str | None,
                 scheduler: str | None = None) -> list[dict]:
        """-> one dict per image: id, seed, and the settings it was made with (all persisted).

        scheduler: a boothkit.pipeline.SCHEDULERS name (None: the model's own); each request builds its own from
        the shared pipeline's scheduler config, so concurrent requests never share a scheduler's state."""
        from ..generate import GenerateConfig, UsageError, generate_images
        from ..pipeline import make_scheduler

        model_prompt, rows, weights = self.resolve_prompt(prompt, concepts)
        try:
            cfg = GenerateConfig(n=n, seed=seed, steps=steps, guidance=guidance, height=height, width=width,
                                 negative_prompt=negative_prompt or None)
        except UsageError as e:
            raise RequestError(str(e).replace("--", "")) from e
        with self._slots:
            try:
                shared = self.pipeline_for(rows, weights)
                pipe = copy.copy(shared)  # shallow: shares the weights, not the per-call state
                pipe.scheduler = (make_scheduler(shared.scheduler.config, scheduler) if scheduler
                                  else type(shared.scheduler).from_config(shared.scheduler.config))
                images = generate_images(pipe, model_prompt, cfg)
            except RequestError:
                raise
            except UsageError as e:
                raise RequestError(str(e).replace("--", "")) from e
            except Exception as e:
                if is_out_of_memory(e):
                    self.forget_concepts()
                    free_memory()
                    raise RequestError(f"out of memory while generating ({e}); memory was freed: try fewer or "
                                       f"smaller images", 503) from e
                raise
        out = []
        for i, im in enumerate(images):
            settings = {"seed": seed + i, "steps": steps, "guidance": guidance, "scheduler": scheduler,
                        "width": im.width, "height": im.height, "negative_prompt": negative_prompt or None,
                        "concepts": [r["name"] for r in rows], "model": self.model, "model_prompt": model_prompt,
                        **({"concept_weights": weights} if any(w != 1.0 for w in weights) else {})}
            image_id = self.store.add_image(im, prompt, settings)
            out.append({"id": image_id, "prompt": prompt, **settings})
        return out

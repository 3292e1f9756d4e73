"""Per-image metrics of the world protocol. Nothing here is a model being judged.

- identity: the judge (boothkit.judge, trained only to tell glyphs apart) embeds the image; `judge_i` is the mean
  cosine to the subject's reference photos (the analogue of DINO), `identity_acc` whether the subject is the
  judge's nearest glyph among all world glyphs of its class (`identity_top5`: among the 5 nearest).
- attributes: background colour, position, size and style read from pixels (boothkit.world.measure), scored only
  for the attributes the prompt asks for.
- composition: the image is cut in two along the prompt's axis; each half is centred on a canvas of the measured
  background; the companion is "there" when it is among the judge's 5 nearest glyphs of its class in its half.
  The subject's half is what identity is measured on for composition prompts.
- clip_t: the world CLIP's text-image cosine (its text tower + projection head, its vision tower) between the
  image and the prompt with the class noun in place of the identifier (the CLIP-T analogue).
The ceiling baseline (exact renders) runs through the same code: its numbers say how exact the measurement is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..world.concepts import Concept, concept_index
from ..world.measure import measure, measure_background, measure_style
from ..world.references import renderer
from .protocol import BenchPrompt


def half_crops(images: torch.Tensor, axis: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 3, 64, 64] -> (first half, second half), each centred on a 64x64 canvas of the measured background.

    axis "right": left | right halves; "bottom": top | bottom halves."""
    _, rgb = measure_background(images)
    b, _, h, w = images.shape
    canvas = rgb.view(b, 3, 1, 1).expand(b, 3, h, w)
    a, c = canvas.clone(), canvas.clone()
    if axis == "right":
        half = w // 2
        a[:, :, :, half // 2: half // 2 + half] = images[:, :, :, :half]
        c[:, :, :, half // 2: half // 2 + half] = images[:, :, :, half:]
    else:
        half = h // 2
        a[:, :, half // 2: half // 2 + half] = images[:, :, :half]
        c[:, :, half // 2: half // 2 + half] = images[:, :, half:]
    return a, c


class WorldCLIP:
    """The world model's CLIP pair: text tower + text_projection head, vision tower with its projection."""

    def __init__(self, world_dir: str | Path, device="cpu"):
        from safetensors.torch import load_file
        from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

        world_dir = Path(world_dir)
        self.device = torch.device(device)
        self.tokenizer = CLIPTokenizer.from_pretrained(str(world_dir / "tokenizer"))
        self.text = CLIPTextModel.from_pretrained(str(world_dir / "text_encoder"), torch_dtype=torch.float32)
        self.vision = CLIPVisionModelWithProjection.from_pretrained(str(world_dir / "image_encoder"),
                                                                    torch_dtype=torch.float32)
        self.text.to(self.device).eval()
        self.vision.to(self.device).eval()
        heads = load_file(str(world_dir / "world_clip" / "heads.safetensors"))
        self.text_projection = heads["text_projection.weight"].float().to(self.device)

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return F.normalize(self.text(input_ids=ids).pooler_output.float() @ self.text_projection.T, dim=-1)

    @torch.no_grad()
    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.device).float() - 0.5) / 0.5
        return F.normalize(self.vision(pixel_values=x).image_embeds.float(), dim=-1)


@dataclass
class SubjectRefs:
    """The subject's reference photos as the judge sees them."""

    concept: Concept
    embeds: torch.Tensor  #: [R, D] unit judge embeddings of the reference photos


class WorldScorer:
    """Scores generated images of one subject against the protocol's prompts."""

    def __init__(self, judge, prototypes: dict, clip: WorldCLIP | None):
        self.judge, self.protos, self.clip = judge, prototypes, clip

    @torch.no_grad()
    def refs(self, concept: Concept, photos: torch.Tensor) -> SubjectRefs:
        return SubjectRefs(concept, self.judge(photos))

    def _rank(self, emb: torch.Tensor, concept: Concept) -> torch.Tensor:
        rows, P = self.protos[concept.cls]
        sims = emb @ P.T
        target = sims[:, rows.index(concept_index()[concept.id])]
        return (sims > target[:, None]).sum(1)

    @torch.no_grad()
    def identity(self, images: torch.Tensor, refs: SubjectRefs) -> dict[str, list]:
        e = self.judge(images)
        rank = self._rank(e, refs.concept)
        return {"judge_i": (e @ refs.embeds.T).mean(1).tolist(), "identity_acc": (rank == 0).float().tolist(),
                "identity_top5": (rank < 5).float().tolist()}

    @torch.no_grad()
    def present(self, images: torch.Tensor, concept: Concept) -> list[float]:
        """Whether `concept` is among the judge's 5 nearest glyphs of its class (1.0 / 0.0 per image)."""
        return (self._rank(self.judge(images), concept) < 5).float().tolist()

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompt: BenchPrompt, refs: SubjectRefs, clip_text: str,
              companion: Concept | None = None) -> list[dict]:
        """One dict per image: identity, the asked attributes (True/False), composition, clip_t."""
        images = images.float().cpu().clamp(0, 1)
        n = images.shape[0]
        rows = [dict() for _ in range(n)]
        if prompt.group == "composition":
            mine, theirs = half_crops(images, prompt.companion_side)
            ident = self.identity(mine, refs)
            comp = self.present(theirs, companion)
            for r, c in zip(rows, comp):
                r["composition"] = bool(c)
        else:
            ident = self.identity(images, refs)
            asked = prompt.asked()
            if asked:
                found = measure(images)
                styles = (measure_style(images, [concept_index()[refs.concept.id]] * n, found, renderer())
                          if "style" in asked else [None] * n)
                for r, m, st in zip(rows, found, styles):
                    got = {"bg": m.bg, "position": m.position, "size": m.size, "style": st}
                    for a in asked:
                        r[a] = got[a] == getattr(prompt, a)
        for k, vals in ident.items():
            for r, v in zip(rows, vals):
                r[k] = round(float(v), 5)
        if self.clip is not None:
            sims = (self.clip.image_embeds(images) @ self.clip.text_embeds([clip_text]).T)[:, 0].cpu()
            for r, s in zip(rows, sims.tolist()):
                r["clip_t"] = round(s, 5)
        return rows


def fidelity_checks(row: dict) -> list[bool]:
    """The prompt-fidelity checks of one image: every asked attribute and the composition check."""
    return [row[k] for k in ("bg", "position", "size", "style", "composition") if k in row]

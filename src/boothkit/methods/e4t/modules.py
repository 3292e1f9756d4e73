"""E4T's trainable parts and how they attach to a stock diffusers pipeline (Gal et al. 2023, arXiv 2302.12228).

Nothing here reads files or knows about the CLI.

* Domain encoder (§3.1): the frozen CLIP vision tower of the pipeline (``pipe.image_encoder``) -> its projected
  image embedding and the mean of its patch tokens -> a small MLP head -> an OFFSET from the class word's input
  embedding: ``e = embed(class) + s * E(x)`` (s = offset_scale, 0.1). The head's last layer starts at zero, so a
  fresh encoder predicts exactly the class word. An L2 penalty on ``s * E(x)`` keeps the word near its class.
  Decision: the paper (and the unofficial re-implementation) also feeds the encoder UNet features of the current
  noisy latent, so the word changes at every denoising step and the encoder has to run at inference. Ours sees the
  image only: the predicted word is ONE vector per subject, which a stock textual-inversion file can hold, and
  generation costs nothing extra. The cost is expressiveness (no timestep-dependent word).
* Weight offsets (§3.2): the paper learns offsets ``W * (1 + delta)`` on the attention projections. Ours are low
  rank, ``W + (alpha / rank) * B A`` on ``to_q``/``to_k``/``to_v`` of every self- and cross-attention layer (peft
  LoRA, B = 0 at initialisation, so the UNet starts exactly as the base), penalised by ``sum ||Delta W||_F^2``.
  Low rank keeps the per-concept artifact small (a few hundred kB) and lets ``pipe.load_lora_weights`` read it.
* Several photos: their CLIP features are averaged before the head (at one photo this is the paper).
* SDXL (two text encoders): the word goes into both encoders, each offset from that encoder's own embedding of the
  class word; one head predicts both (DomainEncoder); the weight offsets sit on SDXL's attention like SD's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import UNET_TARGETS, EncoderConfig


def encoder_dims(pipe) -> dict:
    """The sizes the head is built for, read from the pipeline's components: the vision tower's, and the input
    embedding width of each text encoder of the family (SD one, SDXL two; `text_dim` is their sum, the head's
    output)."""
    from ...families import family_of

    enc = getattr(pipe, "image_encoder", None)
    if enc is None:
        from ...inputs import InputError

        raise InputError("E4T needs a CLIP vision tower: this base model has no image_encoder; pass --image-encoder "
                         "DIR_OR_ID (a CLIPVisionModelWithProjection, e.g. the one its encoder was trained with)")
    widths = [int(e.get_input_embeddings().weight.shape[1]) for e in family_of(pipe).text_encoders(pipe)]
    return {"vision_embed": int(enc.config.projection_dim), "vision_hidden": int(enc.config.hidden_size),
            "image_size": int(enc.config.image_size), "text_dim": sum(widths), "text_dims": widths}


def dims_fit(saved: dict, have: dict) -> bool:
    """Whether an encoder built for `saved` sizes fits a pipeline of `have` sizes (encoders written before SDXL
    support record one text width and no `text_dims`)."""
    norm = lambda d: {**d, "text_dims": list(d.get("text_dims") or [d["text_dim"]])}  # noqa: E731
    return norm(saved) == norm(have)


class DomainEncoder(nn.Module):
    """CLIP features -> embedding offset. ``forward`` returns ``s * E(x)`` (add the class embedding to use it).

    On a family with several text encoders (SDXL) ONE head predicts the offsets of all of them, concatenated
    (decision: both words name the same subject from the same photo, so they share the hidden layer, and the head
    stays one small MLP whose last layer is as wide as the encoders together, 768 + 1280 on SDXL); `split` cuts the
    output into one offset per encoder, each added to that encoder's own embedding of the class word.
    """

    def __init__(self, cfg: EncoderConfig, dims: dict):
        super().__init__()
        self.cfg, self.dims = cfg, dims
        d_in = dims["vision_embed"] + dims["vision_hidden"]
        self.norm = nn.LayerNorm(d_in)
        self.fc1 = nn.Linear(d_in, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, dims["text_dim"])
        nn.init.zeros_(self.fc2.weight)  # a fresh encoder predicts a zero offset: e == embed(class) exactly
        nn.init.zeros_(self.fc2.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, vision_embed + vision_hidden] -> offset [B, text_dim]."""
        return self.cfg.offset_scale * self.fc2(F.gelu(self.fc1(self.norm(features))))

    def split(self, offset: torch.Tensor) -> list[torch.Tensor]:
        """[..., text_dim] -> one [..., width] per text encoder, in the family's slot order."""
        return list(offset.split(list(self.dims.get("text_dims") or [self.dims["text_dim"]]), dim=-1))


@torch.no_grad()
def clip_features(image_encoder, images: torch.Tensor, mean, std) -> torch.Tensor:
    """Frozen vision tower: images [N, 3, H, W] in [0, 1] -> [N, vision_embed + vision_hidden]
    (projected image embedding, mean of the patch tokens)."""
    from ..instantbooth.modules import normalise_pixels

    size = int(image_encoder.config.image_size)
    pix = normalise_pixels(images.float(), size, mean, std).to(image_encoder.device, image_encoder.dtype)
    out = image_encoder(pixel_values=pix)
    patches = out.last_hidden_state[:, 1:].mean(1)  # [N, vision_hidden] (token 0 is CLS)
    return torch.cat([out.image_embeds, patches], -1).float()


def preprocessing_of(pipe, frame: bool = False) -> dict:
    """How photos are fed to the vision tower (its size, mean/std) and whether they are framed first."""
    from .. import vision

    return {**vision.tower_preprocessing(pipe), "frame": frame,
            "input": "framed: the subject cut out on white by its mask, centred square at 3/4 of the side "
                     "(boothkit.data.frame_subject)" if frame else "the photo as given (centre square, no masking)"}


def add_weight_offsets(unet, cfg: EncoderConfig) -> None:
    """Low-rank weight offsets (peft LoRA, adapter "default", B = 0) on every attention q/k/v projection."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights=True,
                                target_modules=list(UNET_TARGETS)))


def offset_parameters(unet) -> dict[str, torch.nn.Parameter]:
    """The weight offsets' trainable tensors by name (lora_A / lora_B of the "default" adapter)."""
    return {n: p for n, p in unet.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def weight_offset_l2(unet) -> torch.Tensor:
    """sum over the adapted layers of ||Delta W||_F^2, Delta W = scaling * B A (the paper's weight-offset penalty)."""
    from peft.tuners.lora import LoraLayer

    total = None
    for m in unet.modules():
        if isinstance(m, LoraLayer) and "default" in m.lora_A:
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight  # [r, in], [out, r]
            sq = (m.scaling["default"] * (b @ a)).pow(2).sum()
            total = sq if total is None else total + sq
    if total is None:
        raise ValueError("the UNet has no E4T weight offsets (add_weight_offsets was not called)")
    return total


def embedding_l2(offset: torch.Tensor) -> torch.Tensor:
    """The embedding-offset penalty: ||s * E(x)||^2 per subject, averaged over the batch. offset [B, D] -> []."""
    return offset.pow(2).sum(-1).mean()


class WordInjector:
    """Puts a predicted word embedding at every position of one token, through a forward hook on the text
    encoder's input embedding (the tokenizer and the embedding matrix stay as they are).

    ``set(e)``: e [D] (one subject for the whole batch) or [B, D] (one per prompt). The hook's output equals
    what a text encoder whose row for the token IS e would compute, so a textual-inversion file holding e
    reproduces it exactly.
    """

    def __init__(self, text_encoder, token_id: int):
        self.token_id = token_id
        self.word: torch.Tensor | None = None
        self._handle = text_encoder.get_input_embeddings().register_forward_hook(self._hook)

    def set(self, word: torch.Tensor | None) -> None:
        self.word = word

    def _hook(self, module, args, out):
        if self.word is None:
            return out
        ids = args[0] if args else None
        if ids is None:
            return out
        where = (ids == self.token_id).unsqueeze(-1)  # [B, L, 1]
        if not bool(where.any()):
            return out
        w = self.word.to(out.device, out.dtype)
        w = w.view(1, 1, -1) if w.dim() == 1 else w[:, None, :]  # [1 or B, 1, D]
        return torch.where(where, w, out)

    def remove(self) -> None:
        self._handle.remove()

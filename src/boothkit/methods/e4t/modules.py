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
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import UNET_TARGETS, EncoderConfig


def encoder_dims(pipe) -> dict:
    """The sizes the head is built for, read from the pipeline's components."""
    enc = getattr(pipe, "image_encoder", None)
    if enc is None:
        raise ValueError("E4T needs the pipeline's image encoder (pipe.image_encoder is None); the world model ships "
                         "one, for other models load a CLIPVisionModelWithProjection into the pipeline")
    return {"vision_embed": int(enc.config.projection_dim), "vision_hidden": int(enc.config.hidden_size),
            "image_size": int(enc.config.image_size), "text_dim": int(pipe.text_encoder.config.hidden_size)}


class DomainEncoder(nn.Module):
    """CLIP features -> embedding offset. ``forward`` returns ``s * E(x)`` (add the class embedding to use it)."""

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


@torch.no_grad()
def frame_photos(images: torch.Tensor) -> torch.Tensor:
    """images [N, 3, H, W] in [0, 1] -> the same size, each with its flat background painted white and the subject
    cropped square around it at 3/4 of the side (InstantBooth's reference framing). The one function both domain
    pretraining and tuning call for an encoder pretrained with `frame`, so the encoder sees photos framed alike."""
    import numpy as np
    from PIL import Image

    from ..instantbooth.inference import centre_subject, mask_flat_background

    n, _, h, w = images.shape
    arr = (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    out = [np.asarray(centre_subject(mask_flat_background(Image.fromarray(a))).resize((w, h), Image.Resampling.BICUBIC))
           for a in arr]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255).to(images.device)


def preprocessing_of(pipe, frame: bool = False) -> dict:
    fe = getattr(pipe, "feature_extractor", None)
    mean = list(getattr(fe, "image_mean", None) or [0.48145466, 0.4578275, 0.40821073])
    std = list(getattr(fe, "image_std", None) or [0.26862954, 0.26130258, 0.27577711])
    return {"image_size": int(pipe.image_encoder.config.image_size), "mean": mean, "std": std, "frame": frame,
            "input": "framed: flat background to white, the subject cropped square at 3/4 of the side (frame_photos)"
            if frame else "the photo as given (centre square, no masking)"}


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

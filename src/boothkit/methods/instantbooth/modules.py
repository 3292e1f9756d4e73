"""InstantBooth's trainable parts and how they attach to a stock diffusers UNet (Shi et al. 2023, arXiv 2304.03411).

Nothing here reads files or knows about the CLI. The frozen base model is untouched; three things are added:

* concept head (§3.2, "concept embedding"): the frozen CLIP vision tower's projected image embedding, averaged over
  the N reference images, -> one vector in the text encoder's hidden size. It REPLACES the text encoder's OUTPUT at
  the identifier's position ("sks"), multiplied by alpha (concept renormalisation, §3.4). Decision: the head ends
  in a LayerNorm, so the embedding comes out on the scale of the text encoder's own outputs (which leave its
  final_layer_norm) and alpha is a scale relative to an ordinary output token.
* patch head (§3.3): the vision tower's last hidden state (CLS + patch tokens, 65 per 64 px world image) -> the
  UNet's cross-attention dim; the tokens of all N images are concatenated. Decision: one shared head to the
  cross-attention dim (the space the UNet's cross-attention already reads), and each adapter owns a linear map
  from there to its block's width, as GLIGEN's gated block does; this keeps the patch head independent of the
  UNet's block widths.
* a gated self-attention adapter per UNet transformer block, between self- and cross-attention:
  ``y <- y + beta * tanh(gamma) * SelfAttn(LN([y, patches]))[:, :len(y)]`` with gamma = 0 at initialisation, so a
  fresh adapter is an exact no-op. beta = 1 in training, ~0.3 at inference.

How the adapter is placed without forking the UNet: each BasicTransformerBlock's ``attn1`` processor is wrapped by
`InstantBoothAttnProcessor`, and a forward pre-hook on the block hands that processor the block's input h. The
block computes ``h + attn1(norm1(h))``; the wrapper returns ``attn1_out + delta(h + attn1_out)``, so the residual
stream that reaches ``norm2``/``attn2`` is exactly ``y + delta(y)`` with ``y = h + attn1_out``, which is the paper's
placement. diffusers' GLIGEN block (``GatedSelfAttentionDense``) sits in the same place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import InstantBoothConfig


class Head(nn.Module):
    """A linear map (hidden == 0, the paper's choice) or a 2-layer GELU MLP, optionally followed by a LayerNorm."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 0, out_norm: bool = False):
        super().__init__()
        if hidden:
            self.fc1 = nn.Linear(d_in, hidden)
            self.fc2 = nn.Linear(hidden, d_out)
        else:
            self.fc2 = nn.Linear(d_in, d_out)
        self.norm = nn.LayerNorm(d_out) if out_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "fc1"):
            x = F.gelu(self.fc1(x))
        x = self.fc2(x)
        return self.norm(x) if self.norm is not None else x


class GatedSelfAttention(nn.Module):
    """``beta * tanh(gamma) * SelfAttn(LN([y, W patches]))[:, :len(y)]``: the adapter's update (not y + update).

    A small multi-head attention of its own (not diffusers' ``Attention``, whose processor would then show up in
    ``unet.attn_processors`` and break ``set_attn_processor`` for other tools).
    """

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"adapter width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.proj = nn.Linear(context_dim, dim)  # patches (cross-attention dim) -> this block's width
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.gamma = nn.Parameter(torch.zeros(()))  # tanh(0) = 0: a fresh adapter adds exactly zero

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, m, d = x.shape  # [B, m, d] -> [B, heads, m, d / heads]
        return x.view(b, m, self.heads, d // self.heads).transpose(1, 2)

    def patch_kv(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the patch tokens: [P, M, context_dim] -> 2 x [P, heads, M, d / heads].

        LayerNorm works token by token, so LN([y, W p]) = [LN(y), LN(W p)]: the patches' keys and values do not
        depend on y and are the same at every denoising step (the processor caches them at inference).
        """
        x = self.norm(self.proj(patches))
        return self._heads(self.to_k(x)), self._heads(self.to_v(x))

    def forward(self, y: torch.Tensor, patches: torch.Tensor | None, beta: float | torch.Tensor,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """y [B, n, d] image tokens of this block; patches [B or 1, M, context_dim] (or their `patch_kv`);
        beta a float or per row [B, 1, 1]."""
        b, n, d = y.shape
        x = self.norm(y)
        kp, vp = kv if kv is not None else self.patch_kv(patches)
        if kp.shape[0] != b:
            kp, vp = kp.expand(b, -1, -1, -1), vp.expand(b, -1, -1, -1)
        # only the image tokens' outputs are kept ([:, :len(y)]), so only they need queries
        k = torch.cat([self._heads(self.to_k(x)), kp], dim=2)  # [B, heads, n + M, d / heads]
        v = torch.cat([self._heads(self.to_v(x)), vp], dim=2)
        out = F.scaled_dot_product_attention(self._heads(self.to_q(x)), k, v)  # [B, heads, n, d / heads]
        return (beta * torch.tanh(self.gamma)) * self.to_out(out.transpose(1, 2).reshape(b, n, d))


def adapter_key(block_name: str) -> str:
    """'down_blocks.0.attentions.1.transformer_blocks.0' -> 'down_blocks-0-attentions-1-transformer_blocks-0'."""
    return block_name.replace(".", "-")


def transformer_blocks(unet) -> dict[str, nn.Module]:
    """Every BasicTransformerBlock of the UNet, by module name (a supported block, or a clear error)."""
    from diffusers.models.attention import BasicTransformerBlock

    blocks = {n: m for n, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)}
    if not blocks:
        raise ValueError("this UNet has no BasicTransformerBlock: InstantBooth's adapters have nowhere to go")
    for n, m in blocks.items():
        if m.norm_type != "layer_norm" or m.pos_embed is not None or m.only_cross_attention:
            raise ValueError(f"{n}: unsupported transformer block (norm_type={m.norm_type!r}); InstantBooth's "
                             "adapter placement assumes Stable Diffusion's pre-LayerNorm blocks")
    return blocks


def model_dims(pipe) -> dict:
    """The sizes the heads and adapters are built for, read from the pipeline's components (and its family: the
    concept embedding replaces one position of the text conditioning, which on SDXL is both encoders' states)."""
    from ...families import family_of

    enc = getattr(pipe, "image_encoder", None)
    if enc is None:
        raise ValueError("InstantBooth needs the pipeline's image encoder (pipe.image_encoder is None); the world "
                         "model ships one, for other models load a CLIPVisionModelWithProjection into the pipeline")
    vc = enc.config
    return {
        "vision_hidden": int(vc.hidden_size),
        "vision_embed": int(vc.projection_dim),
        "image_size": int(vc.image_size),
        "text_dim": family_of(pipe).text_width(pipe),  # SDXL: both encoders' widths (the context's D)
        "cross_dim": int(pipe.unet.config.cross_attention_dim),
        "blocks": {n: int(m.norm1.normalized_shape[0]) for n, m in transformer_blocks(pipe.unet).items()},
    }


class InstantBooth(nn.Module):
    """The trainable parts: `concept_head`, `patch_head`, `adapters` (their state_dict keys are the artifact's)."""

    def __init__(self, cfg: InstantBoothConfig, dims: dict):
        super().__init__()
        self.cfg, self.dims = cfg, dims
        self.concept_head = Head(dims["vision_embed"], dims["text_dim"], cfg.concept_head_hidden, out_norm=True)
        self.patch_head = Head(dims["vision_hidden"], dims["cross_dim"], cfg.patch_head_hidden)
        self.adapters = nn.ModuleDict({adapter_key(n): GatedSelfAttention(w, dims["cross_dim"], cfg.adapter_heads)
                                       for n, w in dims["blocks"].items()})

    def encode(self, image_embeds: torch.Tensor, image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per subject: N images -> (concept embedding, patch tokens).

        image_embeds: [B, N, E] the vision tower's projected embeddings (N images of each of B subjects)
        image_tokens: [B, N, T, H] its last hidden state (CLS + patches)
        -> concept [B, text_dim] = head(mean over the N images), patches [B, N * T, cross_dim] (concatenated)
        """
        concept = self.concept_head(image_embeds.mean(dim=1))
        b, n, t, h = image_tokens.shape
        patches = self.patch_head(image_tokens.reshape(b, n * t, h))
        return concept, patches


def image_features(image_encoder, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen vision tower: pixel_values [N, 3, S, S] (already normalised) -> (embeds [N, E], tokens [N, T, H])."""
    out = image_encoder(pixel_values=pixel_values.to(image_encoder.device, image_encoder.dtype))
    return out.image_embeds, out.last_hidden_state


def normalise_pixels(images: torch.Tensor, image_size: int, mean, std) -> torch.Tensor:
    """images float [N, 3, H, W] in [0, 1] -> the vision tower's input (resize to image_size, then mean/std)."""
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bicubic", align_corners=False)
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def single_token_id(tokenizer, word: str) -> int:
    """The one token id of an identifier; InputError when the tokenizer splits it (InstantBooth needs one token)."""
    from ...inputs import InputError

    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise InputError(f"identifier {word!r} is {len(ids)} tokens for this tokenizer; InstantBooth needs one token "
                         "(a single-token word such as sks)")
    return ids[0]


def inject_concept(hidden: torch.Tensor, input_ids: torch.Tensor, token_id: int, concept: torch.Tensor,
                   alpha: float) -> torch.Tensor:
    """Replace the text encoder's OUTPUT at every position of `token_id` by alpha * concept (§3.2, §3.4).

    hidden: [B, L, D] text encoder last hidden state; input_ids: [B, L]; concept: [B, D] or [D]
    -> [B, L, D]; every other position is returned unchanged (bit for bit).
    """
    concept = concept.to(hidden.dtype).reshape(-1, 1, hidden.shape[-1])  # [B or 1, 1, D]
    where = (input_ids == token_id).to(hidden.device).unsqueeze(-1)  # [B, L, 1]
    return torch.where(where, alpha * concept, hidden)


@dataclass
class ImageCondition:
    """Per-call state shared by every adapter: the patch tokens and beta. patches None = adapters off.

    Two subjects in one prompt (beyond the paper; concept.py): their patch tokens are concatenated along M, so every
    adapter attends to [y, patches_1, patches_2], and each identifier gets its own concept token through
    `inject_concept`. Expected failure mode: nothing ties subject i's patches to the image region of identifier i,
    so appearances mix; a cross-attention mask from each identifier's attn2 map would be the next step.
    """

    patches: torch.Tensor | None = None  #: [P, M, cross_dim]; P = 1 (one subject for the whole batch) or P = batch
    beta: float = 1.0
    version: int = 0  #: bumped by every set_patches: the processors' cached patch keys/values are stale then
    #: Image guidance (beyond the paper, IP-Adapter's way): the first `uncond_rows` rows of a UNet batch of exactly
    #: 2 * uncond_rows are classifier-free guidance's unconditional half, and get the adapters at `uncond_beta`
    #: (0: off) instead of beta, so that guidance pushes towards the photos as well as the prompt. None: every row
    #: gets beta (the paper). uncond_rows is set per pipeline call by inference.track_guidance.
    uncond_beta: float | None = None
    uncond_rows: int = 0

    def row_beta(self, b: int, like: torch.Tensor) -> float | torch.Tensor:
        """beta for a UNet batch of b rows: a float, or [b, 1, 1] when the CFG halves get different strengths."""
        if self.uncond_beta is None or not self.uncond_rows or b != 2 * self.uncond_rows:
            return self.beta
        r = self.uncond_rows
        rows = [self.uncond_beta] * r + [self.beta] * r
        return torch.tensor(rows, device=like.device, dtype=like.dtype).view(b, 1, 1)

    def check_batch(self, b: int) -> None:
        p = self.patches.shape[0]
        if p not in (1, b):  # 1: CFG halves and several images per prompt share the one subject
            raise ValueError(f"InstantBooth was given patch tokens for {p} subjects but the UNet batch is {b}: "
                             "give one subject per call, or one per batch element")


class InstantBoothAttnProcessor(nn.Module):
    """Wraps a block's ``attn1`` processor: self-attention as before, then the gated adapter on y = h + attn1_out."""

    def __init__(self, adapter: GatedSelfAttention, base, condition: ImageCondition):
        super().__init__()
        self.adapter = adapter
        self.base = base  # the processor that was there (AttnProcessor2_0 on a stock UNet)
        self.condition = condition
        self.block_input: torch.Tensor | None = None  # set by the block's forward pre-hook
        self._kv_key, self._kv = None, None

    def _patch_kv(self, y: torch.Tensor):
        """The patches' keys/values, computed once per set_patches at inference (not when gradients flow)."""
        patches = self.condition.patches.to(y.device, y.dtype)
        if torch.is_grad_enabled():
            self._kv_key = self._kv = None
            return self.adapter.patch_kv(patches)
        key = (self.condition.version, y.device, y.dtype)
        if self._kv_key != key:
            self._kv_key, self._kv = key, self.adapter.patch_kv(patches)
        return self._kv

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        h, self.block_input = self.block_input, None
        if self.condition.patches is None or h is None:
            return out
        y = h + out  # [B, n, d]: the residual stream after self-attention
        self.condition.check_batch(y.shape[0])
        # block: h + (out + delta) = y + delta(y); delta == 0 exactly while gamma == 0
        return out + self.adapter(y, None, self.condition.row_beta(y.shape[0], y), kv=self._patch_kv(y))


class Attached:
    """What `attach` returns: set the per-call image conditioning, or detach the adapters again."""

    def __init__(self, unet, model: InstantBooth, condition: ImageCondition, originals: dict, hooks: list):
        self.unet, self.model, self.condition = unet, model, condition
        self._originals, self._hooks = originals, hooks

    def set_patches(self, patches: torch.Tensor | None, beta: float | None = None) -> None:
        """patches [P, M, cross_dim] (None: adapters off); beta: adapter strength (None: keep).

        Call it again after changing the adapters' weights in place: it is what invalidates the cached patch keys
        and values.
        """
        self.condition.patches = patches
        self.condition.version += 1
        if beta is not None:
            self.condition.beta = float(beta)

    def detach(self) -> None:
        """Put the original attn1 processors back and remove the hooks: the UNet is as before `attach`."""
        blocks = transformer_blocks(self.unet)
        for name, proc in self._originals.items():
            blocks[name].attn1.set_processor(proc)
        for h in self._hooks:
            h.remove()
        self._hooks = []


def attach(unet, model: InstantBooth, beta: float = 1.0) -> Attached:
    """Install `model`'s adapters into every transformer block of a stock diffusers UNet (processors + hooks).

    The adapters move to the UNet's device and dtype. Returns an `Attached` whose `set_patches` sets the image
    conditioning of the following UNet calls.
    """
    blocks = transformer_blocks(unet)
    missing = sorted(set(adapter_key(n) for n in blocks) ^ set(model.adapters.keys()))
    if missing:
        raise ValueError(f"the InstantBooth adapters do not match this UNet's transformer blocks: {missing[:4]}...")
    p = next(unet.parameters())
    model.adapters.to(p.device, p.dtype)
    condition = ImageCondition(None, beta)
    originals, hooks = {}, []
    for name, block in blocks.items():
        base = block.attn1.get_processor()
        if isinstance(base, InstantBoothAttnProcessor):
            raise ValueError(f"{name}: InstantBooth adapters are already attached to this UNet")
        proc = InstantBoothAttnProcessor(model.adapters[adapter_key(name)], base, condition)
        block.attn1.set_processor(proc)
        originals[name] = base

        def stash(module, args, kwargs, proc=proc):
            proc.block_input = args[0] if args else kwargs["hidden_states"]

        hooks.append(block.register_forward_pre_hook(stash, with_kwargs=True))
    return Attached(unet, model, condition, originals, hooks)

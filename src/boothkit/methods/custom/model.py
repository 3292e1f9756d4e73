"""What Custom Diffusion trains: cross-attention key/value projections + one modifier token per concept.

Each cross-attention layer (`attn2`) gets diffusers' CustomDiffusionAttnProcessor2_0, whose own K/V (and, with
train_q_out, Q/out) projections start as copies of the layer's weights: the model starts exactly as the base model.
The projections read the context at its own width (SD: the text encoder's; SDXL: both encoders' states concatenated),
and the modifier token is added to every text encoder of the family (SDXL: both), its rows trained in each.
"""

from __future__ import annotations

import torch

from ...training.recipe import Recipe
from ..ti.model import EmbeddingRows, add_tokens_per_encoder, rows_key


def cross_attention_layers(unet) -> dict[str, torch.nn.Module]:
    """processor name ('...attn2.processor') -> its Attention module, for every cross-attention layer."""
    return {f"{name}.processor": mod for name, mod in unet.named_modules()
            if name.endswith("attn2") and getattr(mod, "is_cross_attention", True)}


def custom_processor(attn, train_q_out: bool, weights: dict[str, torch.Tensor] | None = None):
    """A CustomDiffusionAttnProcessor2_0 for `attn`, initialised from attn's weights (or from `weights`)."""
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    proc = CustomDiffusionAttnProcessor2_0(train_kv=True, train_q_out=train_q_out,
                                           hidden_size=attn.to_k.out_features,
                                           cross_attention_dim=attn.to_k.in_features,
                                           out_bias=attn.to_out[0].bias is not None)
    with torch.no_grad():
        proc.to_k_custom_diffusion.weight.copy_(attn.to_k.weight)
        proc.to_v_custom_diffusion.weight.copy_(attn.to_v.weight)
        if train_q_out:
            proc.to_q_custom_diffusion.weight.copy_(attn.to_q.weight)
            proc.to_out_custom_diffusion[0].weight.copy_(attn.to_out[0].weight)
            if attn.to_out[0].bias is not None:
                proc.to_out_custom_diffusion[0].bias.copy_(attn.to_out[0].bias)
        if weights:
            proc.load_state_dict(weights)
    return proc.to(attn.to_k.weight.device, attn.to_k.weight.dtype)


def install_processors(unet, train_q_out: bool, state: dict[str, torch.Tensor] | None = None) -> dict:
    """Swap a custom processor into every attn2 (others keep theirs); state = artifact tensors to load."""
    procs = dict(unet.attn_processors)
    for name, attn in cross_attention_layers(unet).items():
        sub = None
        if state is not None:
            sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            if not sub:
                raise ValueError(f"custom diffusion weights have nothing for {name}")
            train_q_out = "to_q_custom_diffusion.weight" in sub
        procs[name] = custom_processor(attn, train_q_out, sub)
    unet.set_attn_processor(dict(procs))  # (diffusers pops entries from the dict it is given)
    return {n: procs[n] for n in cross_attention_layers(unet)}


def processor_state(unet) -> dict[str, torch.Tensor]:
    """Artifact tensors in diffusers' key format: '<processor name>.to_k_custom_diffusion.weight' ..."""
    out = {}
    for name in cross_attention_layers(unet):
        proc = unet.attn_processors[name]
        for k, v in proc.state_dict().items():
            out[f"{name}.{k}"] = v.detach()
    return out


class CustomRecipe(Recipe):
    def setup(self) -> None:
        cfg = self.cfg
        slots = self.family.slots
        self.random_resize = cfg.random_resize
        #: per slot: token -> its id in that slot's tokenizer (a one-element list)
        self.slot_token_ids: list[dict[str, list[int]]] = [{} for _ in slots]
        for s in self.subjects:
            for got, ids in zip(self.slot_token_ids,
                                add_tokens_per_encoder(self.family, self, [s.token], cfg.modifier_init)):
                got[s.token] = ids
        self.slot_rows = [EmbeddingRows(getattr(self, slot.encoder), [i for ids in v.values() for i in ids])
                          for slot, v in zip(slots, self.slot_token_ids)]
        self.processors = install_processors(self.unet, cfg.train_q_out)
        for proc in self.processors.values():
            proc.requires_grad_(True)
        self.train_modules = ("unet",) + tuple(slot.encoder for slot in slots)

    def trainable_parameters(self):
        return [p for proc in self.processors.values() for p in proc.parameters()] + [r.param for r in self.slot_rows]

    def after_step(self) -> None:
        for r in self.slot_rows:
            r.sync()

    def state_tensors(self):
        rows = {rows_key(i, slot): r.rows() for i, (slot, r) in enumerate(zip(self.family.slots, self.slot_rows))}
        return {**{f"unet.{k}": v for k, v in processor_state(self.unet).items()}, **rows}

    def load_state_tensors(self, tensors):
        with torch.no_grad():
            for name, proc in self.processors.items():
                for k, p in proc.named_parameters():
                    p.copy_(tensors[f"unet.{name}.{k}"])
        for i, (slot, r) in enumerate(zip(self.family.slots, self.slot_rows)):
            r.load(tensors[rows_key(i, slot)])

    def save_artifact(self, folder) -> dict:
        from .artifact import save

        return save(self, folder)

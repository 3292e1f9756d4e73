"""What Custom Diffusion trains: cross-attention key/value projections + one modifier token per concept.

Each cross-attention layer (`attn2`) gets diffusers' CustomDiffusionAttnProcessor2_0, whose own K/V (and, with
train_q_out, Q/out) projections start as copies of the layer's weights: the model starts exactly as the base model.
"""

from __future__ import annotations

import torch

from ...training.recipe import Recipe
from ..ti.model import EmbeddingRows, add_tokens


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
    train_modules = ("unet", "text_encoder")

    def setup(self) -> None:
        cfg = self.cfg
        self.random_resize = cfg.random_resize
        self.token_ids = {}
        for s in self.subjects:
            self.token_ids[s.token] = add_tokens(self.tokenizer, self.text_encoder, [s.token], cfg.modifier_init)
        self.rows = EmbeddingRows(self.text_encoder, [i for ids in self.token_ids.values() for i in ids])
        self.processors = install_processors(self.unet, cfg.train_q_out)
        for proc in self.processors.values():
            proc.requires_grad_(True)

    def trainable_parameters(self):
        return [p for proc in self.processors.values() for p in proc.parameters()] + [self.rows.emb]

    def after_step(self) -> None:
        self.rows.restore()

    def state_tensors(self):
        return {**{f"unet.{k}": v for k, v in processor_state(self.unet).items()}, "embeddings": self.rows.rows()}

    def load_state_tensors(self, tensors):
        with torch.no_grad():
            for name, proc in self.processors.items():
                for k, p in proc.named_parameters():
                    p.copy_(tensors[f"unet.{name}.{k}"])
        self.rows.load(tensors["embeddings"])

    def save_artifact(self, folder) -> dict:
        from .artifact import save

        return save(self, folder)

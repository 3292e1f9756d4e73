"""What Textual Inversion trains: the embedding rows of a new placeholder token, nothing else.

The token is added to every text encoder of the family (SD: one; SDXL: both, one embedding per encoder, trained
together, as diffusers' train_textual_inversion_sdxl.py does). Only the new rows are a parameter (EmbeddingRows):
the embedding matrix stays frozen, so no other token's row can change (a test checks), and the gradient and the
optimizer's moments are the rows' size, not the matrix's (diffusers' scripts optimise the whole matrix and copy the
other rows back after each step: 456 MB of gradient and AdamW state on SD-1.5, 1.2 GB on SDXL, and a copy per step).
"""

from __future__ import annotations

import torch

from ...inputs import InputError
from ...training.recipe import Recipe


def token_names(token: str, n: int) -> list[str]:
    """diffusers' multi-vector convention: <tok>, <tok>_1, ..., <tok>_{n-1}."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def add_tokens(tokenizer, text_encoder, tokens: list[str], init_word: str) -> list[int]:
    """Add tokens to the tokenizer, grow the embedding, initialise the new rows from init_word's first token."""
    added = tokenizer.add_tokens(tokens)
    if added != len(tokens):
        raise InputError(f"token(s) {tokens} already exist in the tokenizer: pick a new placeholder (--identifier)")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer))
    init_ids = tokenizer.encode(init_word, add_special_tokens=False)
    if not init_ids:
        raise InputError(f"initialiser word {init_word!r} encodes to no token")
    emb = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for i in ids:
            emb[i] = emb[init_ids[0]].clone()
    return ids


def add_tokens_per_encoder(family, holder, tokens: list[str], init_word: str) -> list[list[int]]:
    """add_tokens in every (tokenizer, text encoder) pair of the family; holder: the pipeline or a recipe (whatever
    has the slots' attributes). -> the new ids, one list per slot."""
    return [add_tokens(getattr(holder, s.tokenizer), getattr(holder, s.encoder), tokens, init_word)
            for s in family.slots]


def expand_prompt(prompt: str, token: str, n: int) -> str:
    """'a photo of <t> dog' -> 'a photo of <t> <t>_1 <t>_2 dog' (what the pipeline's loader does at inference)."""
    return prompt.replace(token, " ".join(token_names(token, n))) if n > 1 else prompt


class EmbeddingRows:
    """Trains chosen rows of a text encoder's input embedding as their own parameter.

    The parameter ([n, D], fp32) is registered on the embedding module (so the text encoder's parameters, and DDP's
    gradient synchronisation over several processes, include it); a forward hook puts its rows at the positions of
    their token ids, so gradients reach it and nothing else. The matrix itself stays frozen and, after every
    optimizer step (`sync`), holds the rows' current values: whatever reads the weight (the artifact writers, a
    validation grid, the closed-form merge) sees the trained rows, and the hook's output equals the plain lookup's.
    """

    NAME = "boothkit_trained_rows"

    def __init__(self, text_encoder, ids: list[int]):
        self.module = text_encoder.get_input_embeddings()
        self.module.weight.requires_grad_(False)
        self.ids = torch.tensor(ids)
        weight = self.module.weight
        self.param = torch.nn.Parameter(weight.detach()[self.ids.to(weight.device)].clone().float())
        self.module.register_parameter(self.NAME, self.param)
        position = torch.full((weight.shape[0],), -1, dtype=torch.long)
        position[self.ids] = torch.arange(len(ids))
        self._position = position  #: token id -> its row in the parameter, -1 for every other token
        self._handle = self.module.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        ids = args[0] if args else None
        if ids is None:
            return out
        if self._position.device != ids.device:  # moved once, not at every forward
            self._position = self._position.to(ids.device)
        row = self._position[ids]  # [B, L]
        where = row >= 0
        if not bool(where.any()):
            return out
        return torch.where(where.unsqueeze(-1), self.param.to(out.dtype)[row.clamp(min=0)], out)

    @torch.no_grad()
    def sync(self) -> None:
        """Write the trained rows into the embedding matrix (after each optimizer step)."""
        w = self.module.weight
        if self.ids.device != w.device:
            self.ids = self.ids.to(w.device)
        w[self.ids] = self.param.detach().to(w.device, w.dtype)

    def rows(self) -> torch.Tensor:
        return self.param.detach().clone()  # [n, D]

    @torch.no_grad()
    def load(self, rows: torch.Tensor) -> None:
        self.param.copy_(rows.to(self.param.device, self.param.dtype))
        self.sync()


def rows_key(i: int, slot) -> str:
    """Checkpoint key of slot i's trained rows ("embeddings" for the first encoder, as before SDXL)."""
    return "embeddings" if i == 0 else f"embeddings.{slot.encoder}"


class TIRecipe(Recipe):
    def setup(self) -> None:
        cfg = self.cfg
        slots = self.family.slots
        #: per slot: token -> the ids of its vectors in that slot's tokenizer; `vectors` is the first slot's
        self.slot_vectors: list[dict[str, list[int]]] = [{} for _ in slots]
        for s in self.subjects:
            names = token_names(s.token, cfg.num_vectors)
            for got, ids in zip(self.slot_vectors, add_tokens_per_encoder(self.family, self, names,
                                                                          cfg.init_token or s.class_noun)):
                got[s.token] = ids
            s.images.map_prompts(lambda p, s=s: expand_prompt(p, s.token, cfg.num_vectors))
        self.vectors = self.slot_vectors[0]
        self.slot_rows = [EmbeddingRows(getattr(self, slot.encoder), [i for ids in v.values() for i in ids])
                          for slot, v in zip(slots, self.slot_vectors)]
        self.train_modules = tuple(slot.encoder for slot in slots)

    def trainable_parameters(self):
        return [r.param for r in self.slot_rows]

    def after_step(self) -> None:
        for r in self.slot_rows:
            r.sync()

    def state_tensors(self):
        return {rows_key(i, slot): r.rows() for i, (slot, r) in enumerate(zip(self.family.slots, self.slot_rows))}

    def load_state_tensors(self, tensors):
        for i, (slot, r) in enumerate(zip(self.family.slots, self.slot_rows)):
            r.load(tensors[rows_key(i, slot)])

    def save_artifact(self, folder) -> dict:
        from .artifact import save

        return save(self, folder)

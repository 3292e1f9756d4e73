"""What Textual Inversion trains: the embedding rows of a new placeholder token, nothing else.

The token is added to every text encoder of the family (SD: one; SDXL: both, one embedding per encoder, trained
together, as diffusers' train_textual_inversion_sdxl.py does). The whole embedding matrix has requires_grad (that is
how nn.Embedding works), so after every optimizer step the rows of all other tokens are copied back from a saved
original: they stay bit-identical (a test checks).
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
    """Trains chosen rows of the text encoder's input embedding; restores every other row after each step."""

    def __init__(self, text_encoder, ids: list[int]):
        self.emb = text_encoder.get_input_embeddings().weight
        self.ids = torch.tensor(ids)
        self.frozen = torch.ones(self.emb.shape[0], dtype=torch.bool)
        self.frozen[self.ids] = False
        self.original = self.emb.detach().clone()  # [V, D]
        self.emb.requires_grad_(True)

    @torch.no_grad()
    def restore(self) -> None:
        self.emb[self.frozen] = self.original[self.frozen].to(self.emb.device, self.emb.dtype)

    def rows(self) -> torch.Tensor:
        return self.emb.detach()[self.ids.to(self.emb.device)]  # [n, D]

    @torch.no_grad()
    def load(self, rows: torch.Tensor) -> None:
        self.emb[self.ids.to(self.emb.device)] = rows.to(self.emb.device, self.emb.dtype)


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
        return [r.emb for r in self.slot_rows]

    def after_step(self) -> None:
        for r in self.slot_rows:
            r.restore()

    def state_tensors(self):
        return {rows_key(i, slot): r.rows() for i, (slot, r) in enumerate(zip(self.family.slots, self.slot_rows))}

    def load_state_tensors(self, tensors):
        for i, (slot, r) in enumerate(zip(self.family.slots, self.slot_rows)):
            r.load(tensors[rows_key(i, slot)])

    def save_artifact(self, folder) -> dict:
        from .artifact import save

        return save(self, folder)

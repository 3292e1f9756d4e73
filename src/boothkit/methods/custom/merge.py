"""Closed-form merge of separately trained Custom Diffusion concepts (Kumari et al. 2023, §3.3, eq. 4).

For every cross-attention K and V weight W0 (base) with fine-tuned versions W_i (concept i), find

    W = argmin_W || C_reg (W - W0)^T ||_F   subject to   C W^T = V,   V = [C_1 W_1^T; ...; C_n W_n^T]

where C_reg holds text features of regularisation captions (keep the model's behaviour on ordinary text) and C_i
the features of concept i's own caption at and after its modifier token (reproduce each concept's fine-tuned
outputs there exactly). With A = C_reg^T C_reg the Lagrangian gives

    W = W0 + (V - C W0^T)^T (C A^-1 C^T)^-1 C A^-1

one linear solve per layer. Features before the modifier token are shared by every prompt with the same prefix
("a photo of"), so constraining them for two concepts would be contradictory: they go into C_reg instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ... import __version__
from ...inputs import CONCEPT_FILE, InputError, check_out, read_concept, staged_folder
from .artifact import WEIGHTS, embedding_file, save_parts

#: caption templates for the regularisation features (plus each concept's class prompt)
_REG_TEMPLATES = ("a photo of a {}", "a {} on a {} background", "a photo of a {} in the {}", "a small {}",
                  "a large {} in the center", "{} background", "a grayscale photo of a {}", "an outline of a {}")


def regularisation_captions(classes: list[str]) -> list[str]:
    from ...world.concepts import CLASSES
    from ...world.scenes import BACKGROUNDS, POSITIONS

    nouns = list(dict.fromkeys(list(classes) + list(CLASSES)))
    bgs = list(BACKGROUNDS)
    caps = []
    for i, noun in enumerate(nouns):
        for j, t in enumerate(_REG_TEMPLATES):
            n_slots = t.count("{}")
            if n_slots == 1:
                caps.append(t.format(noun))
            else:
                other = bgs[(i + j) % len(bgs)] if "background" in t else POSITIONS[(i + j) % len(POSITIONS)]
                caps.append(t.format(noun, other))
    return caps


@torch.no_grad()
def _features(tokenizer, text_encoder, prompts: list[str], from_token: str | None = None) -> torch.Tensor:
    """Text encoder hidden states of the real tokens (BOS excluded, up to EOS), stacked -> [N, D] float64.

    from_token: keep only positions at and after that token (the concept constraint rows).
    """
    rows = []
    for p in prompts:
        ids = tokenizer(p, truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        h = text_encoder(ids)[0][0]  # [L, D]
        start = 1
        if from_token is not None:
            tid = tokenizer.convert_tokens_to_ids(from_token)
            pos = (ids[0] == tid).nonzero()
            if len(pos) == 0:
                raise ValueError(f"token {from_token} not in prompt {p!r}")
            start = int(pos[0])
        rows.append(h[start:ids.shape[1]].double())
    return torch.cat(rows)


def solve_constrained(w0: torch.Tensor, c_reg: torch.Tensor, c: torch.Tensor, v: torch.Tensor,
                      ridge: float = 1e-6) -> torch.Tensor:
    """min ||C_reg (W - W0)^T|| s.t. C W^T = V.  w0 [out, in], c_reg [m, in], c [k, in], v [k, out] -> W [out, in]."""
    w0 = w0.double()
    a = c_reg.T @ c_reg  # [in, in]
    a = a + ridge * a.diagonal().mean().clamp_min(1e-12) * torch.eye(a.shape[0], dtype=a.dtype)
    a_inv_ct = torch.linalg.solve(a, c.T)  # [in, k] = A^-1 C^T
    m = c @ a_inv_ct  # [k, k]
    m = m + 1e-10 * m.diagonal().mean().clamp_min(1e-12) * torch.eye(m.shape[0], dtype=m.dtype)
    resid = v.double() - c @ w0.T  # [k, out]
    lam = torch.linalg.solve(m, resid)  # [k, out]
    return w0 + (a_inv_ct @ lam).T  # [out, in]


def merge_concepts(concept_dirs: list, out, model: str = "world") -> tuple[Path, dict]:
    """Merge Custom Diffusion concept folders into one concept folder at `out` (tokens renamed <new1>, <new2>...)."""
    from ...pipeline import load_pipeline, model_hash
    from .model import cross_attention_layers

    if len(concept_dirs) < 2:
        raise InputError("merge needs at least two concept folders")
    metas = [read_concept(d) for d in concept_dirs]
    base_hash = model_hash(model)
    for d, m in zip(concept_dirs, metas):
        if m.get("method") != "custom":
            raise InputError(f"{d}: method {m.get('method')!r}; only Custom Diffusion concepts can be merged")
        if m.get("model_hash") != base_hash:
            raise InputError(f"{d}: trained on base model {m.get('base_model')!r} (hash {m.get('model_hash')}), not "
                             f"--model {model} (hash {base_hash})")
        if m.get("train_q_out"):
            raise InputError(f"{d}: trained with train_q_out; the closed-form merge covers K/V-only concepts")
    out = check_out(out)
    pipe = load_pipeline(model, device="cpu", dtype="fp32", progress=False)
    tok, te = pipe.tokenizer, pipe.text_encoder

    # 1. every concept's tokens under new, distinct names, with their trained embeddings
    new_tokens, classes, owners, embeddings = [], [], [], {}
    for d, m in zip(concept_dirs, metas):
        for t, cls in zip(m["tokens"], m.get("classes") or [m["class"]]):
            name = f"<new{len(new_tokens) + 1}>"
            vec = load_file(str(Path(d) / embedding_file(t)))[t].reshape(-1)
            new_tokens.append(name)
            classes.append(cls)
            owners.append((Path(d), t))
            embeddings[name] = vec
    tok.add_tokens(new_tokens)
    te.resize_token_embeddings(len(tok))
    emb = te.get_input_embeddings().weight
    with torch.no_grad():
        for name, vec in embeddings.items():
            emb[tok.convert_tokens_to_ids(name)] = vec

    # 2. text features: regularisation captions, and each token's caption from the token on
    prompts = [f"a photo of {t} {c}" for t, c in zip(new_tokens, classes)]
    c_reg = _features(tok, te, regularisation_captions(classes) + prompts)  # includes the shared "a photo of" rows
    c_by_token = [_features(tok, te, [p], from_token=t) for p, t in zip(prompts, new_tokens)]

    # 3. per layer: targets from each concept's own weights, one constrained solve
    states = {}
    for d, m in zip(concept_dirs, metas):
        states[Path(d)] = load_file(str(Path(d) / WEIGHTS))
    merged = {}
    for name, attn in cross_attention_layers(pipe.unet).items():
        for proj, base_w in (("to_k", attn.to_k.weight), ("to_v", attn.to_v.weight)):
            key = f"{name}.{proj}_custom_diffusion.weight"
            c_rows, v_rows = [], []
            for (d, _), c_i in zip(owners, c_by_token):
                w_i = states[d][key].double()
                c_rows.append(c_i)
                v_rows.append(c_i @ w_i.T)
            merged[key] = solve_constrained(base_w.detach(), c_reg, torch.cat(c_rows), torch.cat(v_rows)).float()

    with staged_folder(out) as staged:
        files = save_parts(merged, embeddings, staged)
        meta = {"method": "custom", "base_model": model, "model_hash": base_hash, "tokens": new_tokens,
                "class": classes[0], "classes": classes, "prompt": prompts[0], "prompts": prompts,
                "files": files, "train_q_out": False, "boothkit_version": __version__,
                "merged_from": [{"folder": str(d), "token": t} for d, t in owners],
                "config": {"merge": "closed-form constrained least squares (Kumari et al. 2023 eq. 4)",
                           "regularisation_captions": len(regularisation_captions(classes)) + len(prompts)}}
        (staged / CONCEPT_FILE).write_text(json.dumps(meta, indent=1))
    return out, meta

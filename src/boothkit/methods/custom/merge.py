"""Closed-form merge of separately trained Custom Diffusion concepts (Kumari et al. 2023, §3.3, eq. 4).

For every cross-attention K and V weight W0 (base) with fine-tuned versions W_i (concept i), find

    W = argmin_W || C_reg (W - W0)^T ||_F   subject to   C W^T = V,   V = [C_1 W_1^T; ...; C_n W_n^T]

where C_reg holds text features of regularisation captions (keep the model's behaviour on ordinary text) and C_i
the features of concept i's own caption at and after its modifier token (reproduce each concept's fine-tuned
outputs there exactly). With A = C_reg^T C_reg the Lagrangian gives

    W = W0 + (V - C W0^T)^T (C A^-1 C^T)^-1 C A^-1

one linear solve per layer. Features before the modifier token are shared by every prompt with the same prefix
("a photo of"), so constraining them for two concepts would be contradictory: they go into C_reg instead.

The features are the rows the K/V projections read: the cross-attention context, as the family computes it (SD: the
text encoder's last hidden state; SDXL: both encoders' penultimate states concatenated, 768 + 1280 on SDXL base; the
pooled embedding and the size conditioning reach the UNet through its time embedding, not through K/V). So the
same solve applies to every family, with the modifier tokens' embeddings set in every text encoder.

Regularisation captions: the caller's (`boothkit merge --reg-captions FILE`, one per line; the paper regularises
with real captions close to the concepts', about 200). Without them, `template_captions` (a few generic templates
per class noun), with a warning that says so. The world model's own scene captions are the CLI's default there
(boothkit.world.regularisation): a method never imports the world.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from ... import __version__
from ...inputs import CONCEPT_FILE, InputError, check_out, read_concept, staged_folder
from .artifact import WEIGHTS, load_embeddings, save_parts

#: generic caption templates, per class noun, used when the caller gives no regularisation captions
TEMPLATES = ("a photo of a {}", "a {}", "a close-up photo of a {}", "a photo of a {} outdoors",
             "a photo of a {} indoors", "a painting of a {}", "a black and white photo of a {}",
             "a photo of a small {}", "a photo of a large {}", "a blurry photo of a {}")
#: how many real captions the paper's regularisation set has (the warning's recommendation)
PAPER_CAPTIONS = 200


def template_captions(classes: list[str]) -> list[str]:
    """The default regularisation captions: every template with each distinct class noun (10 per class)."""
    return [t.format(noun) for noun in dict.fromkeys(classes) for t in TEMPLATES]


def read_reg_captions(path: str | Path) -> list[str]:
    """Regularisation captions from a text file, one per line (blank lines skipped). InputError naming the file for
    a missing, unreadable or empty one."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"--reg-captions {path}: no such file")
    if not path.is_file():
        raise InputError(f"--reg-captions {path}: not a file (give a text file, one caption per line)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"--reg-captions {path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise InputError(f"--reg-captions {path}: cannot be read ({e.strerror})") from None
    captions = [line.strip() for line in text.splitlines() if line.strip()]
    if not captions:
        raise InputError(f"--reg-captions {path}: no captions in it (one caption per line)")
    return captions


def concept_classes(concept_dirs: list) -> list[str]:
    """The class noun of every subject of the concepts, in order (what a caller may build captions from)."""
    classes = []
    for d in concept_dirs:
        m = read_concept(d)
        classes += list(m.get("classes") or [m.get("class", "")])
    return classes


@torch.no_grad()
def _features(tokenizers, text_encoders, prompts: list[str], from_token: str | None = None,
              family=None) -> torch.Tensor:
    """The context rows of the real tokens of each prompt (BOS excluded, up to EOS), stacked -> [N, D] float64.

    tokenizers, text_encoders: one per text encoder of `family` (slot order), or SD's single pair (family None: SD).
    The rows come from the family's encoding (family.encode_ids), so they are exactly the context the K/V
    projections read; CLIP's causal attention makes each token's state independent of the padding after it.
    from_token: keep only positions at and after that token (the concept constraint rows).
    """
    from ...families import family_named

    if not isinstance(tokenizers, (list, tuple)):
        tokenizers, text_encoders = [tokenizers], [text_encoders]
    family = family or family_named("sd")
    rows = []
    for p in prompts:
        ids = [t(p, truncation=True, max_length=t.model_max_length, return_tensors="pt").input_ids for t in tokenizers]
        if any(i.shape != ids[0].shape for i in ids):
            raise ValueError(f"the text encoders' tokenizers split {p!r} into different lengths")
        h = family.encode_ids(ids, list(text_encoders)).hidden[0]  # [L, D]
        start = 1
        if from_token is not None:
            found = [(i[0] == t.convert_tokens_to_ids(from_token)).nonzero() for t, i in zip(tokenizers, ids)]
            if any(len(f) == 0 for f in found):
                raise ValueError(f"token {from_token} not in prompt {p!r}")
            if any(int(f[0]) != int(found[0][0]) for f in found):
                raise ValueError(f"token {from_token} sits at different positions in the tokenizers' ids of {p!r}")
            start = int(found[0][0])
        rows.append(h[start:ids[0].shape[1]].double())
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


def merge_concepts(concept_dirs: list, out, model: str = "world", reg_captions: list[str] | None = None,
                   reg_source: str | None = None) -> tuple[Path, dict]:
    """Merge Custom Diffusion concept folders into one concept folder at `out` (tokens renamed <new1>, <new2>...).

    reg_captions: the regularisation captions (C_reg's prompts); reg_source says where they came from (recorded in
    concept.json, e.g. "file: captions.txt"). None: template_captions of the concepts' classes, with a warning.
    Each concept's own prompt ("a photo of <newi> <class>") joins C_reg too (its rows before the token).
    """
    from ...families import family_named
    from ...pipeline import load_pipeline, model_family, model_hash
    from .model import cross_attention_layers

    if len(concept_dirs) < 2:
        raise InputError("merge needs at least two concept folders")
    metas = [read_concept(d) for d in concept_dirs]
    family = model_family(model)
    base_hash = model_hash(model)
    for d, m in zip(concept_dirs, metas):
        if m.get("method") != "custom":
            raise InputError(f"{d}: method {m.get('method')!r}; only Custom Diffusion concepts can be merged")
        made_for = m.get("family", "sd")  # concepts before SDXL support are all SD
        if made_for != family.name:
            raise InputError(f"{d}: made for a {family_named(made_for).label} base model ({m.get('base_model')!r}); "
                             f"--model {model} is {family.label}: concepts do not carry over between families")
        if m.get("model_hash") != base_hash:
            raise InputError(f"{d}: trained on base model {m.get('base_model')!r} (hash {m.get('model_hash')}), not "
                             f"--model {model} (hash {base_hash})")
        if m.get("train_q_out"):
            raise InputError(f"{d}: trained with train_q_out; the closed-form merge covers K/V-only concepts")
    # every concept's tokens under new, distinct names, with their trained embeddings (one per text encoder)
    new_tokens, classes, owners, embeddings = [], [], [], {}
    for d, m in zip(concept_dirs, metas):
        for t, cls in zip(m["tokens"], m.get("classes") or [m["class"]]):
            name = f"<new{len(new_tokens) + 1}>"
            new_tokens.append(name)
            classes.append(cls)
            owners.append((Path(d), t))
            embeddings[name] = load_embeddings(d, family, t)
    if reg_captions is None:
        reg_captions, reg_source = template_captions(classes), "templates"
        warnings.warn(f"merge: no regularisation captions given; using {len(reg_captions)} generic templates of the "
                      f"classes ({', '.join(dict.fromkeys(classes))}); the paper uses about {PAPER_CAPTIONS} real "
                      "captions like the concepts' (--reg-captions FILE, one per line)", stacklevel=2)
    reg_captions = list(reg_captions)
    if not reg_captions:
        raise InputError("merge: the regularisation captions are empty")
    out = check_out(out)
    pipe = load_pipeline(model, device="cpu", dtype="fp32", progress=False)
    tokenizers, encoders = family.tokenizers(pipe), family.text_encoders(pipe)
    for i, (tok, te) in enumerate(zip(tokenizers, encoders)):
        if tok.add_tokens(new_tokens) != len(new_tokens):
            raise InputError(f"--model {model}: its tokenizer already has a token named like {new_tokens}")
        te.resize_token_embeddings(len(tok))
        emb = te.get_input_embeddings().weight
        with torch.no_grad():
            for name in new_tokens:
                emb[tok.convert_tokens_to_ids(name)] = embeddings[name][i].to(emb.dtype)
    too_long = sum(len(tokenizers[0](c).input_ids) > tokenizers[0].model_max_length for c in reg_captions)
    if too_long:
        warnings.warn(f"merge: {too_long} regularisation caption(s) longer than the text encoder's "
                      f"{tokenizers[0].model_max_length} tokens: their ends are left out", stacklevel=2)

    # text features: regularisation captions, and each token's caption from the token on
    prompts = [f"a photo of {t} {c}" for t, c in zip(new_tokens, classes)]
    c_reg = _features(tokenizers, encoders, reg_captions + prompts, family=family)  # with the shared prefix rows
    c_by_token = [_features(tokenizers, encoders, [p], from_token=t, family=family)
                  for p, t in zip(prompts, new_tokens)]

    # per layer: targets from each concept's own weights, one constrained solve
    states = {Path(d): load_file(str(Path(d) / WEIGHTS)) for d in concept_dirs}
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

    reg = {"count": len(reg_captions), "source": reg_source or "given",
           "sha256": hashlib.sha256("\n".join(reg_captions).encode()).hexdigest()[:16]}
    with staged_folder(out) as staged:
        files = save_parts(merged, embeddings, staged, family)
        meta = {"method": "custom", "base_model": model, "model_hash": base_hash, "family": family.name,
                "tokens": new_tokens, "class": classes[0], "classes": classes, "prompt": prompts[0],
                "prompts": prompts, "files": files, "train_q_out": False, "boothkit_version": __version__,
                "merged_from": [{"folder": str(d), "token": t} for d, t in owners],
                "config": {"merge": "closed-form constrained least squares (Kumari et al. 2023 eq. 4)",
                           "regularisation_captions": reg, "concept_prompts": len(prompts)}}
        (staged / CONCEPT_FILE).write_text(json.dumps(meta, indent=1))
    return out, meta

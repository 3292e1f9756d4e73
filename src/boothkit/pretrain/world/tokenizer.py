"""Build the world's CLIP tokenizer offline from the CLIP BPE merges.

The merges are OpenAI CLIP's byte-level BPE (the `bpe_simple_vocab_16e6.txt.gz` file that open-clip-torch ships,
MIT licence). The vocabulary is built the way CLIP builds it: the 256 byte symbols, the same with the end-of-word
marker, one entry per merge, then the two special tokens: 49,408 ids, identical to Stable Diffusion's tokenizer, so
rare-token identifiers (`sks`) and added placeholder tokens behave exactly as they do there.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # the merges CLIP uses out of the file
OPEN_CLIP_PIN = "open_clip_torch==3.3.0"


def fetch_clip_bpe() -> bytes:
    """The gzip'd merges file, read from the open-clip-torch wheel that pip downloads (no install, no torch)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, OPEN_CLIP_PIN],
                       check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            return zf.read("open_clip/bpe_simple_vocab_16e6.txt.gz")


def build_tokenizer(out_dir: str | Path, bpe_gz: bytes | None = None) -> Path:
    """Write vocab.json, merges.txt and the CLIPTokenizer config to out_dir."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    bpe_gz = bpe_gz if bpe_gz is not None else fetch_clip_bpe()
    lines = gzip.open(io.BytesIO(bpe_gz)).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : N_MERGES + 1] if m.strip()]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    from ...inputs import staged_folder

    out = Path(out_dir)
    # built in a folder beside out and renamed into place: a run killed midway leaves no half tokenizer that the
    # next run would take for a finished one
    with staged_folder(out) as staged, tempfile.TemporaryDirectory() as tmp:
        vfile, mfile = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vfile.write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
        mfile.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
        tok = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
        tok.save_pretrained(str(staged))
        # The slow-tokenizer files too, for readers that want vocab.json + merges.txt (older transformers).
        for f in (vfile, mfile):
            (staged / f.name).write_bytes(f.read_bytes())
    return out

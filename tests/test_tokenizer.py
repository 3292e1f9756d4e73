"""The world tokenizer: SD's CLIP vocabulary, built offline."""

import gzip

from transformers import CLIPTokenizer

from boothkit.pipeline import world_path
from boothkit.pretrain.world.tokenizer import build_tokenizer

# Stable Diffusion 1.x's tokenizer gives these ids for this prompt (openai/clip-vit-large-patch14 vocabulary).
SD_IDS = [49406, 320, 1125, 539, 48136, 1929, 49407]


def test_shipped_tokenizer_matches_sd_ids():
    tok = CLIPTokenizer.from_pretrained(str(world_path() / "tokenizer"))
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok("a photo of sks dog").input_ids == SD_IDS
    assert tok.tokenize("sks") == ["sks</w>"]


def test_placeholder_tokens_behave_as_in_sd():
    tok = CLIPTokenizer.from_pretrained(str(world_path() / "tokenizer"))
    assert tok.add_tokens(["<new1>"]) == 1
    ids = tok("a <new1> dog").input_ids
    assert ids == [49406, 320, 49408, 1929, 49407]


def test_builder_from_a_merges_file(tmp_path):
    # a tiny merges file in CLIP's format: header line, then merges; the builder keeps byte symbols + merges
    merges = ["#version: 0.2", "s k", "sk s</w>", "d o", "do g</w>"]
    blob = gzip.compress(("\n".join(merges) + "\n").encode())
    out = build_tokenizer(tmp_path / "tok", bpe_gz=blob)
    tok = CLIPTokenizer.from_pretrained(str(out))
    assert tok.tokenize("sks dog") == ["sks</w>", "dog</w>"]
    assert tok.convert_tokens_to_ids("<|endoftext|>") == len(tok) - 1

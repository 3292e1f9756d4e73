"""The identity judge: an image encoder used only to evaluate, never by a method.

Like a face-recognition network it is trained on its own (metric learning over every glyph of the world, held-out
subjects included, under heavy augmentation), so it can tell whether a generated image shows a given subject.
A small ResNet; embeddings are L2-normalised, compared by cosine similarity.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(8, cout)
        self.skip = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        h = F.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.silu(h + (x if self.skip is None else self.skip(x)))


class Judge(nn.Module):
    """64x64 RGB in [0, 1] -> unit embedding [B, dim]."""

    def __init__(self, widths=(32, 64, 128, 256), dim: int = 128):
        super().__init__()
        self.config = {"widths": list(widths), "dim": dim}
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1)
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [_Block(cin, w, 1 if i == 0 else 2), _Block(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(images * 2 - 1))
        return F.normalize(self.head(x.mean((2, 3))), dim=-1)

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "judge.safetensors"))
        (folder / "config.json").write_text(json.dumps(self.config, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> "Judge":
        from safetensors.torch import load_file

        folder = Path(folder)
        model = cls(**json.loads((folder / "config.json").read_text()))
        model.load_state_dict(load_file(str(folder / "judge.safetensors")))
        return model.eval()

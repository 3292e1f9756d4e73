"""Textual Inversion settings (Gal et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass

from ...inputs import InputError
from ...training.config import TrainConfig


@dataclass
class TIConfig(TrainConfig):
    """Defaults are the world-model recipe (measured in results/methods_cost.json)."""

    steps: int = 400
    lr: float = 5e-3  #: the paper's 5e-3 (base lr x batch); only a few embedding rows train
    batch_size: int = 4
    weight_decay: float = 0.0  #: decay would pull the new vectors to zero
    num_vectors: int = 1  #: vectors for the placeholder token
    init_token: str = ""  #: word whose embedding initialises the vectors (default: the class noun)

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.num_vectors <= 16:
            raise InputError(f"config: num_vectors must be 1..16 (got {self.num_vectors})")

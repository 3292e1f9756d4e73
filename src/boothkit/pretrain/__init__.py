"""Pretraining: the world model (`boothkit pretrain world`) and, later, encoder-method heads."""

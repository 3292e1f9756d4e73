"""Pretraining: the world model (`boothkit pretrain world`: world/) and the encoder methods' encoders on any data and
base model (`boothkit pretrain instantbooth|e4t`: encoders.py)."""

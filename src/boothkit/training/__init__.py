"""The training core shared by pretraining and the personalisation methods."""

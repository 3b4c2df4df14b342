"""How a model is trained: one run from a config (validation, training loop, evaluation and
saving), distribution strategies, checkpoints, learning-rate schedules and input data."""

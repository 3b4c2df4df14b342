"""What commands must know before TensorFlow loads (checks on sizes and arguments)."""

# g_a downsamples by 16, h_a by another 4: images are padded to a multiple of 64 per side so that
# the latent grids stay whole (and even, for the checkerboard partition of y).
PAD_MULTIPLE = 64
# The memory for the analysis's or the synthesis's activations when none is given: they run over
# tiles that fit it (cbexp.models.tiling; --memory-budget).
DEFAULT_MEMORY_BUDGET_MB = 512


def padded_size(n, multiple=PAD_MULTIPLE):
  """The coded size of an image side of ``n`` pixels."""
  return -(-n // multiple) * multiple


# The values of trainer.precision (cbexp.models.precision.training_policy), here so that a config
# is checked before TensorFlow loads.
TRAINING_PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")

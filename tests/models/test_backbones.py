"""The backbones (conf/transform, cbexp/models/transforms/): each one's parameter count equals a
count written here from its paper's layer list (and CompressAI's published count where one
exists), every entropy model round-trips on every backbone at tiny width, and what cannot work
is refused in one line."""

import numpy as np
import pytest
import tensorflow as tf

from cbexp.config import ConfigError, build_model, compose
from cbexp.models.transforms import cheng2020, elic, mbt2018
from helpers.models import ENTROPY_MODELS, assert_round_trip


# --- independent counts, from the layer lists of the papers (CompressAI's layer names) --------
def conv(kernel, c_in, c_out):
  return kernel * kernel * c_in * c_out + c_out


def gdn(c):  # beta [c] + gamma [c, c]
  return c + c * c


def residual_unit(c):  # 1x1 c -> c/2, 3x3, 1x1 c/2 -> c (ELIC's bottleneck; attention's unit)
  h = c // 2
  return conv(1, c, h) + conv(3, h, h) + conv(1, h, c)


def attention(c):  # trunk: 3 units; mask: 3 units and a 1x1
  return 6 * residual_unit(c) + conv(1, c, c)


def cheng_analysis(n, m, attn=False):
  with_stride = lambda c_in: conv(3, c_in, n) + conv(3, n, n) + gdn(n) + conv(1, c_in, n)  # noqa: E731
  block = 2 * conv(3, n, n)
  return (
    with_stride(3) + block + with_stride(n) + block + with_stride(n) + block + conv(3, n, m)
  ) + (attention(n) + attention(m) if attn else 0)


def cheng_synthesis(n, m, attn=False):
  upsample = conv(3, n, 4 * n) + conv(3, n, n) + gdn(n) + conv(3, n, 4 * n)
  block = 2 * conv(3, n, n)
  first = conv(3, m, n) + conv(3, n, n) + (conv(1, m, n) if m != n else 0)
  return (first + upsample + block + upsample + block + upsample + block + conv(3, n, 3 * 4)) + (
    attention(m) + attention(n) if attn else 0
  )


def elic_analysis(n, m):
  return (
    (conv(5, 3, n) + 2 * conv(5, n, n) + conv(5, n, m) + 9 * residual_unit(n))
    + attention(n)
    + attention(m)
  )


def elic_synthesis(n, m):
  return (
    (conv(5, m, n) + 2 * conv(5, n, n) + conv(5, n, 3) + 9 * residual_unit(n))
    + attention(n)
    + attention(m)
  )


def mbt_analysis_taps(n, m):  # 4 conv 5x5/2 + 3 GDN, kernels counted by their taps
  return conv(5, 3, n) + 2 * conv(5, n, n) + conv(5, n, m) + 3 * gdn(n)


def params(layer):
  return sum(int(np.prod(v.shape)) for v in layer.trainable_variables)


def built(transform, shape):
  transform(tf.zeros(shape))
  return transform


@pytest.mark.parametrize("n,m", [(16, 40), (192, 192)])
def test_cheng2020_counts_follow_the_layer_list(n, m):
  for attn in (False, True):
    a = built(cheng2020.AnalysisTransform(n, m, attention=attn), [1, 32, 32, 3])
    s = built(cheng2020.SynthesisTransform(n, m, attention=attn), [1, 2, 2, m])
    assert params(a) == cheng_analysis(n, m, attn)
    assert params(s) == cheng_synthesis(n, m, attn)


@pytest.mark.parametrize("n,m", [(16, 40), (192, 320)])
def test_elic_counts_follow_the_layer_list(n, m):
  a = built(elic.AnalysisTransform(n, m), [1, 32, 32, 3])
  s = built(elic.SynthesisTransform(n, m), [1, 2, 2, m])
  assert params(a) == elic_analysis(n, m)
  assert params(s) == elic_synthesis(n, m)


def test_published_compressai_counts():
  """CompressAI's counts (g_a, g_s of Cheng2020Anchor N=192, Elic2022Official), from
  ../shared/reference/facts-backbones-precision-tiling-codecs.md: the layer lists give them."""
  assert cheng_analysis(192, 192) == 4_175_040
  assert cheng_synthesis(192, 192) == 11_750_796
  assert elic_analysis(192, 320) == 7_337_792
  assert elic_synthesis(192, 320) == 7_337_475


@pytest.mark.parametrize("n,m", [(16, 40), (192, 320)])
def test_mbt2018_counts_its_rdft_kernels_beyond_the_taps(n, m):
  """mbt2018 is the ms2020 layer list with tfc's RDFT-parameterized kernels: a 5x5 kernel is
  stored as its real DFT, 5x3 complex values = 30 reals, 5 more than its 25 taps per (in, out)
  pair (the summary prints both counts)."""
  a = built(mbt2018.AnalysisTransform(n, m), [1, 32, 32, 3])
  pairs = 3 * n + 2 * n * n + n * m
  assert params(a) == mbt_analysis_taps(n, m) + 5 * pairs


# --- every entropy model on every backbone -----------------------------------------------------
# ms2020 (transform=tiny) is round-tripped with every entropy model by test_entropy_models.py.
PAIRS = [
  (backbone, entropy)
  for backbone in ("mbt2018_tiny", "cheng2020_anchor_tiny", "cheng2020_attn_tiny", "elic_tiny")
  for entropy in ENTROPY_MODELS
]


@pytest.mark.parametrize("backbone,entropy", PAIRS)
def test_every_entropy_model_round_trips_on_every_backbone(model_factory, backbone, entropy):
  overrides = [f"transform={backbone}", f"entropy={entropy}", "entropy.hidden_filters=[16,16]"]
  if entropy == "charm_checkerboard":
    overrides.append("entropy.slices=[4,4,8,8,16]")
  model = model_factory(overrides)
  image = np.random.default_rng(0).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
  compressed = assert_round_trip(model, tf.constant(image))
  assert sum(len(s) for s in compressed.strings) > 0


# --- refused in one line -----------------------------------------------------------------------
@pytest.mark.parametrize(
  "overrides,message",
  [
    (["transform=cheng2020_anchor_tiny", "+transform.depth=3"], "transform.depth: not an option"),
    (["transform=cheng2020_anchor_tiny", "transform.attention=yes"], "expected a bool"),
    (["transform=mbt2018_tiny", "+transform.attention=true"], "not an option of the mbt2018"),
    (["transform=tiny", "transform.name=resnet"], "is not one of cbexp's backbones"),
    (["transform=elic_tiny", "entropy=charm", "entropy.num_slices=7"], "num_slices"),
  ],
)
def test_impossible_combinations_are_refused_in_one_line(overrides, message):
  with pytest.raises((ConfigError, ValueError)) as refused:
    build_model(compose(overrides))
  text = str(refused.value)
  assert message in text and "\n" not in text


def test_reduced_precision_decode_is_refused_for_residual_backbones(model_factory):
  model = model_factory(["transform=cheng2020_anchor_tiny", "entropy=hyperprior"])
  with pytest.raises(ValueError, match="available for the ms2020 and mbt2018 backbones only"):
    model.set_decode_precision("bfloat16")


@pytest.mark.parametrize("module", [cheng2020, elic, mbt2018])
def test_every_weight_of_a_backbone_is_trained(module):
  """A gradient step reaches every variable (a layer Keras does not track is never trained,
  checkpointed or exported), and the strided 1x1 skip of cheng2020 trains on the 3-channel image
  (its strided form crashes TF 2.14's CPU gradient)."""
  analysis, synthesis = module.AnalysisTransform(16, 40), module.SynthesisTransform(16, 40)
  x = tf.random.stateless_uniform([2, 64, 64, 3], seed=[0, 0], maxval=255.0)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.square(synthesis(analysis(x)) - x))
  variables = analysis.trainable_variables + synthesis.trainable_variables
  gradients = tape.gradient(loss, variables)
  assert [v.name for v, g in zip(variables, gradients) if g is None] == []
  assert all(np.isfinite(g.numpy()).all() for g in gradients)

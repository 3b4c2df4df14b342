"""The exact entropy path (``entropy.numerics=exact``, cbexp/entropy/exact.py).

Tiny models, small images: every supported entropy model round-trips bit-exactly with exact
numerics; the integer networks do not depend on the summation order; a decode in another
process with oneDNN off and one thread gives the encoder's image; the range proof splits what
one float32 sum cannot hold exactly and refuses what no split can; float numerics (the default)
are the float layers themselves."""

import functools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from cbexp.config import build_model, compose
from cbexp.entropy import exact
from helpers.models import assert_round_trip, tiny_overrides
from helpers.runs import environment, smooth_image

EXACT_MODELS = ["hyperprior", "checkerboard", "charm", "charm_checkerboard"]
# Two slices keep the channel-slice models' graphs small (every network kind is still there).
FEW_SLICES = {"charm": ["entropy.num_slices=2"], "charm_checkerboard": ["entropy.slices=[1,1]"]}


def _model(entropy, numerics, *extra):
  tf.keras.utils.set_random_seed(0)
  model = build_model(
    compose(
      tiny_overrides(entropy, f"entropy.numerics={numerics}", *FEW_SLICES.get(entropy, []), *extra)
    )
  )
  model.build_coders()
  return model


_cached = functools.lru_cache(maxsize=None)(_model)  # for the tests that change nothing


@pytest.fixture(scope="module")
def image():
  return tf.constant(smooth_image(64, 64, 3))


@pytest.mark.parametrize("entropy", EXACT_MODELS)
def test_exact_round_trip_and_float_on_the_same_weights(entropy, image):
  model = _cached(entropy, "exact")
  assert isinstance(model.entropy_model.coding_networks(), exact.ExactNetworks)
  compressed = assert_round_trip(model, image)  # decoder's y_hat == encoder's, every element
  # The same weights with float numerics: the float layers themselves, and the rate of both
  # paths about the same (8-bit weights, 11-bit activations: close to float's parameters).
  float_model = _cached(entropy, "float")
  assert float_model.entropy_model.coding_networks() is float_model.entropy_model
  float_compressed = assert_round_trip(float_model, image)
  assert abs(compressed.num_bytes - float_compressed.num_bytes) <= max(
    8, 0.05 * float_compressed.num_bytes
  )


def test_float_numerics_gives_the_strings_of_the_float_layers(image):
  """Default numerics: compress's strings are those of the float layers called as before the
  exact path existed (hyper-synthesis, g_ep, then tfc's coder), on the same weights."""
  model = _cached("hyperprior", "float")
  compressed = model.compress(image)
  x = tf.cast(image[None], tf.float32)  # 64x64: no padding
  y = model.analysis(x)
  z_hat = model.z_coder.decompress(model.z_coder.compress(model.hyper_analysis(y)), [1, 1])
  em = model.entropy_model
  mean, scale_index = em.entropy_parameters(em.hyper_synthesis(z_hat))
  assert compressed.strings[1] == em.gaussian.compress(y, scale_index, mean).numpy()[0]


def _permuted_copy(transform, perm):
  """A copy of a SliceTransform whose first layer reads its input channels in order ``perm``."""
  from cbexp.models.transforms.layers import SliceTransform

  first = transform.layers[0]
  copy = SliceTransform(
    [transform.layers[0].filters, transform.layers[1].filters], transform.layers[2].filters
  )
  copy.build(tf.TensorShape([None, None, None, first.kernel.shape[2]]))
  for source, target in zip(transform.layers, copy.layers):
    for s, t in zip(source.weights, target.weights):
      t.assign(s)
  kernel = first.kernel_parameter.numpy()
  copy.layers[0].kernel_parameter.assign(kernel[:, :, perm, :])
  return copy


def _requantize_reference(u, step, bits):
  """numpy version of exact.requantize (np.frexp gives the exponent exactly)."""
  peak = np.abs(u).max()
  exponent = int(
    np.clip(
      np.frexp(peak)[1] - 1 if peak > 0 else exact.MIN_EXPONENT,
      exact.MIN_EXPONENT,
      exact.MAX_EXPONENT,
    )
  )
  shift = bits - 1 - exponent
  return np.round(u * 2.0**shift), step * 2.0**-shift


def test_exact_networks_do_not_depend_on_summation_order():
  rng = np.random.default_rng(0)
  from cbexp.models.transforms.layers import SliceTransform

  transform = SliceTransform([24, 16], 8)
  transform.build(tf.TensorShape([None, None, None, 40]))
  for weight in transform.weights:  # a trained-like spread: weights and biases not tiny
    weight.assign(rng.normal(scale=0.3, size=weight.shape).astype(np.float32))
  x = tf.constant(rng.normal(scale=4.0, size=[1, 12, 16, 40]), tf.float32)
  perm = rng.permutation(40)
  permuted = _permuted_copy(transform, perm)
  x_perm = tf.gather(x, perm, axis=-1)
  exact_transform = exact.ExactTransform(transform)
  assert len(exact_transform.layers[0].groups) > 1  # 40 channels x 25 taps: several groups
  exact_out = exact_transform(x)
  np.testing.assert_array_equal(exact_out, exact.ExactTransform(permuted)(x_perm))
  # The float32 layers on the same inputs agree only up to rounding (not asserted: how many
  # elements differ depends on the machine).
  np.testing.assert_allclose(transform(x), permuted(x_perm), rtol=1e-4, atol=1e-3)

  # The entropy-parameter network against a numpy int64 reference of the whole chain: grouped
  # float32 products, bias on the accumulator's grid, per-channel scale, ReLU, requantization.
  model = _cached("checkerboard", "exact")
  ep = model.entropy_model.coding_networks().entropy_parameters
  hyper = tf.constant(rng.normal(scale=3.0, size=[1, 4, 8, 40]), tf.float32)
  context = tf.constant(rng.normal(scale=3.0, size=[1, 4, 8, 80]), tf.float32)
  mean, index = ep(hyper, context)
  a, step = _requantize_reference(
    np.concatenate([hyper, context], -1).astype(np.float64), 1.0, exact.ACT_BITS
  )
  layers = [ep._first_both] + ep._rest
  for i, layer in enumerate(layers):
    kernel = np.concatenate([k[0].numpy() for k in layer._kernels], axis=0)  # groups' rows
    acc = (a.astype(np.int64) @ kernel.astype(np.int64)).astype(np.float64)
    u = (acc + np.round(layer._bias.numpy() / step)) * layer._scale.numpy()
    u = np.maximum(u, 0) if layer._relu else u
    a, step = _requantize_reference(
      u, step, exact.OUT_BITS if i == len(layers) - 1 else exact.ACT_BITS
    )
  np.testing.assert_array_equal(np.concatenate([mean, index], -1), (a * step).astype(np.float32))


def test_channel_groups_make_float32_sums_exact():
  """Weights and activations at their bounds: one float32 product over all 512 channels rounds
  (its partial sums pass 2**24); the layer's groups keep every partial sum exact."""
  rng = np.random.default_rng(2)
  w_max, a_max = 2 ** (exact.WEIGHT_BITS - 1), 2**exact.ACT_BITS
  # Odd products of one sign: sums far past 2**24 that float32 cannot hold.
  kernel = rng.choice([w_max - 1, w_max - 3, w_max - 5], size=[512, 16]).astype(np.float64)
  a = rng.choice([a_max - 1, a_max - 3, a_max - 5], size=[64, 512]).astype(np.float64)
  layer = exact.IntegerLayer("wide", exact._dense, [kernel], np.zeros(16), None, relu=False)
  assert len(layer.groups) > 1
  for start, stop in layer.groups:
    assert np.abs(kernel[start:stop]).sum(0).max() * a_max <= exact.FLOAT32_EXACT
  reference = a.astype(np.int64) @ kernel.astype(np.int64)
  np.testing.assert_array_equal(layer.accumulate(tf.constant(a)), reference)
  one_product = tf.matmul(tf.constant(a, tf.float32), tf.constant(kernel, tf.float32))
  assert not np.array_equal(one_product.numpy().astype(np.int64), reference)


def test_requantize_chooses_the_step_from_exact_comparisons():
  for peak in [1.0, 2.0**7, np.nextafter(2.0**7, 0), 3.75, 1e-30, 0.0, 1e300]:
    u = tf.constant([peak, -peak / 3, peak / 7], tf.float64)
    a, step = exact.requantize(u, tf.constant(2.0**-3, tf.float64), exact.ACT_BITS)
    ref_a, ref_step = _requantize_reference(u.numpy(), 2.0**-3, exact.ACT_BITS)
    np.testing.assert_array_equal(a, ref_a)
    assert float(step) == ref_step
    assert np.abs(a.numpy()).max() <= 2**exact.ACT_BITS
    if peak >= 2**exact.MIN_EXPONENT:  # the largest magnitude uses the range
      assert np.abs(a.numpy()).max() >= 2 ** (exact.ACT_BITS - 1)
  for e in [-1022, -60, 0, 1, 52, 60]:
    assert float(exact.power_of_two(tf.constant(e))) == 2.0**e


def test_range_proof_refuses_what_float32_cannot_hold():
  budget = exact.FLOAT32_EXACT // 2**exact.ACT_BITS
  w_max = 2 ** (exact.WEIGHT_BITS - 1)
  taps = budget // w_max
  exact.channel_groups([np.full([taps, 1, 1], float(w_max))], "fits")
  with pytest.raises(exact.ExactRangeError, match="input channel 0 alone"):  # too many taps
    exact.channel_groups([np.full([taps + 1, 1, 1], float(w_max))], "wide")
  groups = exact.channel_groups([np.full([taps // 2, 5, 1], float(w_max))], "split")
  assert groups == [(0, 2), (2, 4), (4, 5)]


def test_autoregressive_refuses_exact_numerics():
  with pytest.raises(ValueError, match="autoregressive: entropy.numerics=exact is not supported"):
    build_model(compose(tiny_overrides("autoregressive", "entropy.numerics=exact")))


def test_tanh_table_is_on_its_grid():
  table = exact.tanh_table()
  assert table[0] == -0.5 and table[-1] == 0.5
  assert np.all(np.diff(table) >= 0)
  np.testing.assert_array_equal(
    table * 2.0**exact.TANH_BITS, np.round(table * 2.0**exact.TANH_BITS)
  )


DECODE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from cbexp.models.compression import Compressed
    from cbexp.codec.model_dir import load_model_dir
    spec = json.load(open(sys.argv[1]))
    model, _ = load_model_dir(spec["model_dir"], numerics="exact")
    strings = [bytes.fromhex(s) for s in spec["strings"]]
    image = model.decompress(Compressed(strings, tuple(spec["shape"])))
    np.save(sys.argv[2], image.numpy())
""")


def test_exact_decode_in_another_numeric_environment(tmp_path, image):
  """Encoded here (oneDNN as configured, default threads); decoded in a fresh process with
  oneDNN off and one intra-op thread (set before TensorFlow imports): the same image."""
  from cbexp.codec.model_dir import save_model_dir

  overrides = tiny_overrides("charm_checkerboard", *FEW_SLICES["charm_checkerboard"])
  tf.keras.utils.set_random_seed(0)
  cfg = compose(overrides)
  save_model_dir(build_model(cfg), cfg, tmp_path / "model")  # trained in float (weights)
  from cbexp.codec.model_dir import load_model_dir

  model, loaded_cfg = load_model_dir(tmp_path / "model", numerics="exact")
  assert loaded_cfg.entropy.numerics == "exact"
  compressed = model.compress(image)
  decoded = model.decompress(compressed).numpy()
  spec = {
    "model_dir": str(tmp_path / "model"),
    "shape": list(compressed.image_shape),
    "strings": [s.hex() for s in compressed.strings],
  }
  (tmp_path / "spec.json").write_text(json.dumps(spec))
  env = dict(environment(), TF_ENABLE_ONEDNN_OPTS="0", OMP_NUM_THREADS="1")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if "PYTHONPATH" in env else []))
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      DECODE_SCRIPT,
      str(tmp_path / "spec.json"),
      str(tmp_path / "decoded.npy"),
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  np.testing.assert_array_equal(np.load(tmp_path / "decoded.npy"), decoded)


def test_load_model_dir_numerics_override(tmp_path):
  from cbexp.codec.model_dir import ModelDirError, load_model_dir, save_model_dir

  cfg = compose(tiny_overrides("hyperprior"))
  save_model_dir(build_model(cfg), cfg, tmp_path)
  with pytest.raises(ModelDirError, match="numerics must be one of"):
    load_model_dir(tmp_path, numerics="int8")


def test_bench_times_float_and_exact_side_by_side(tmp_path):
  """cbexp bench numerics=float,exact: both variants of the same weights in one process, the
  staged decode of the exact one reproducing its decoder (bench raises otherwise)."""
  import pandas as pd

  from cbexp.cli import bench
  from helpers.runs import write_images

  folder = write_images(tmp_path / "images", [(64, 64)])
  out = tmp_path / "bench.csv"
  assert (
    bench.main(
      [
        "entropy=charm_checkerboard",
        f"images={folder}",
        "repeats=1",
        "numerics=float,exact",
        f"out={out}",
        "transform=tiny",
        "entropy.hidden_filters=[16,16]",
        *FEW_SLICES["charm_checkerboard"],
      ]
    )
    == 0
  )
  summary = pd.read_csv(out).set_index("entropy")
  assert set(summary.index) == {"charm_checkerboard", "charm_checkerboard+exact"}
  per_image = pd.read_csv(tmp_path / "bench_per_image.csv").set_index("entropy")
  assert per_image.loc["charm_checkerboard+exact", "numerics"] == "exact"
  assert per_image.loc["charm_checkerboard+exact", "stage_entropy_parameters_s"] > 0


def test_the_integer_scheme_is_part_of_an_exact_models_fingerprint(monkeypatch):
  """Files of another exact scheme on the same weights are refused by the fingerprint check."""
  from cbexp.codec.savedmodel import fingerprint

  weights = [tf.Variable([1.0, 2.0])]
  exact_text, float_text = '{"entropy":{"numerics":"exact"}}', '{"entropy":{"numerics":"float"}}'
  before = fingerprint(exact_text, weights), fingerprint(float_text, weights)
  monkeypatch.setattr(exact, "EXACT_SCHEME", exact.EXACT_SCHEME + 1)
  assert fingerprint(exact_text, weights) != before[0]
  assert fingerprint(float_text, weights) == before[1]

"""Issue 13, item 3: the exact entropy path (``entropy.numerics=exact``, cbexp/entropy/exact.py).

Tiny models, small images: every supported entropy model round-trips bit-exactly with exact
numerics; the integer networks do not depend on the summation order; a decode in another
process with oneDNN off and one thread gives the encoder's image; the range proof refuses what
float64 cannot hold exactly; float numerics (the default) are the float layers themselves."""
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
from conftest import assert_round_trip, tiny_overrides
from run_helpers import environment, smooth_image

EXACT_MODELS = ["hyperprior", "checkerboard", "charm", "charm_checkerboard"]
# Two slices keep the channel-slice models' graphs small (every network kind is still there).
FEW_SLICES = {"charm": ["entropy.num_slices=2"], "charm_checkerboard": ["entropy.slices=[1,1]"]}


def _model(entropy, numerics, *extra):
  tf.keras.utils.set_random_seed(0)
  model = build_model(compose(tiny_overrides(entropy, f"entropy.numerics={numerics}",
                                             *FEW_SLICES.get(entropy, []), *extra)))
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
  # paths about the same (the exact means and scale indexes are within 2**-10 of float's).
  float_model = _cached(entropy, "float")
  assert float_model.entropy_model.coding_networks() is float_model.entropy_model
  float_compressed = assert_round_trip(float_model, image)
  assert (abs(compressed.num_bytes - float_compressed.num_bytes)
          <= max(8, 0.05 * float_compressed.num_bytes))


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
  from cbexp.transforms import SliceTransform
  first = transform.layers[0]
  copy = SliceTransform([transform.layers[0].filters, transform.layers[1].filters],
                        transform.layers[2].filters)
  copy.build(tf.TensorShape([None, None, None, first.kernel.shape[2]]))
  for source, target in zip(transform.layers, copy.layers):
    for s, t in zip(source.weights, target.weights):
      t.assign(s)
  kernel = first.kernel_parameter.numpy()
  copy.layers[0].kernel_parameter.assign(kernel[:, :, perm, :])
  return copy


def test_exact_networks_do_not_depend_on_summation_order():
  rng = np.random.default_rng(0)
  from cbexp.transforms import SliceTransform
  transform = SliceTransform([24, 16], 8)
  transform.build(tf.TensorShape([None, None, None, 40]))
  for weight in transform.weights:  # a trained-like spread: weights and biases not tiny
    weight.assign(rng.normal(scale=0.3, size=weight.shape).astype(np.float32))
  x = tf.constant(rng.normal(scale=4., size=[1, 12, 16, 40]), tf.float32)
  perm = rng.permutation(40)
  permuted = _permuted_copy(transform, perm)
  x_perm = tf.gather(x, perm, axis=-1)
  exact_out = exact.ExactTransform(transform)(x)
  np.testing.assert_array_equal(exact_out, exact.ExactTransform(permuted)(x_perm))
  # The float32 layers on the same inputs agree only up to rounding (not asserted: how many
  # elements differ depends on the machine).
  np.testing.assert_allclose(transform(x), permuted(x_perm), rtol=1e-4, atol=1e-3)

  # The entropy-parameter network: the first layer's accumulator as one product or as two
  # partial sums over halves of the input channels, and a numpy int64 reference.
  model = _cached("checkerboard", "exact")
  ep = model.entropy_model.coding_networks().entropy_parameters
  hyper = tf.constant(rng.normal(scale=3., size=[1, 4, 8, 40]), tf.float32)
  context = tf.constant(rng.normal(scale=3., size=[1, 4, 8, 80]), tf.float32)
  mean, index = ep(hyper, context)
  first = ep._steps[0]
  a_h, a_c = exact.to_grid(hyper), exact.to_grid(context)
  k_h, k_c = first._kernels
  split = (exact._dense(a_h[..., :17], k_h[:17]) + exact._dense(a_c[..., :33], k_c[:33])
           + exact._dense(a_c[..., 33:], k_c[33:]) + exact._dense(a_h[..., 17:], k_h[17:]))
  np.testing.assert_array_equal(split, exact._dense(a_h, k_h) + exact._dense(a_c, k_c))
  acc = (a_h.numpy().astype(np.int64) @ k_h.numpy().astype(np.int64)
         + a_c.numpy().astype(np.int64) @ k_c.numpy().astype(np.int64))
  a = np.maximum(np.round((acc + first._bias.numpy().astype(np.int64)) * first._shift.numpy()),
                 0)
  for step in ep._steps[1:]:
    acc = a.astype(np.int64) @ step._kernels[0].numpy().astype(np.int64)
    a = np.round((acc + step._bias.numpy().astype(np.int64)) * step._shift.numpy())
    a = np.maximum(a, 0) if step._relu else a
    a = np.clip(a, -exact.ACT_BOUND, exact.ACT_BOUND)
  np.testing.assert_array_equal(np.concatenate([mean, index], -1),
                                (a * 2. ** -exact.ACT_FRAC_BITS).astype(np.float32))


def test_exact_context_at_coded_positions_equals_the_full_grid_convolution():
  model = _cached("checkerboard", "exact")
  context = model.entropy_model.coding_networks().context_model
  anchors = tf.constant(np.random.default_rng(1).normal(scale=5., size=[1, 4, 8, 40]),
                        tf.float32)
  np.testing.assert_array_equal(context(anchors), context.full_grid(anchors))


def test_range_proof_refuses_what_float64_cannot_hold():
  with pytest.raises(exact.ExactRangeError, match="2\\*\\*53"):  # too many taps
    exact.quantize_layer([np.ones([1 << 17, 1])], None, "wide")
  exact.quantize_layer([np.ones([1 << 15, 1])], None, "fits")
  model = _model("hyperprior", "float")
  em = model.entropy_model
  em.entropy_parameters.out.bias.assign(tf.fill(em.entropy_parameters.out.bias.shape, 1e9))
  em.numerics = "exact"
  with pytest.raises(exact.ExactRangeError, match="entropy_parameters/layer_2"):
    em.build_coders()  # a bias far beyond what the weights' scale can hold


def test_autoregressive_refuses_exact_numerics():
  with pytest.raises(ValueError, match="autoregressive: entropy.numerics=exact is not supported"):
    build_model(compose(tiny_overrides("autoregressive", "entropy.numerics=exact")))


def test_tanh_table_is_on_its_grid():
  table = exact.tanh_table()
  assert table[0] == -0.5 and table[-1] == 0.5
  assert np.all(np.diff(table) >= 0)
  np.testing.assert_array_equal(table * 2. ** exact.TANH_BITS,
                                np.round(table * 2. ** exact.TANH_BITS))


DECODE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from cbexp.model import Compressed
    from cbexp.model_io import load_model_dir
    spec = json.load(open(sys.argv[1]))
    model, _ = load_model_dir(spec["model_dir"], numerics="exact")
    strings = [bytes.fromhex(s) for s in spec["strings"]]
    image = model.decompress(Compressed(strings, tuple(spec["shape"])))
    np.save(sys.argv[2], image.numpy())
""")


def test_exact_decode_in_another_numeric_environment(tmp_path, image):
  """Encoded here (oneDNN as configured, default threads); decoded in a fresh process with
  oneDNN off and one intra-op thread (set before TensorFlow imports): the same image."""
  from cbexp.model_io import save_model_dir
  overrides = tiny_overrides("charm_checkerboard", *FEW_SLICES["charm_checkerboard"])
  tf.keras.utils.set_random_seed(0)
  cfg = compose(overrides)
  save_model_dir(build_model(cfg), cfg, tmp_path / "model")  # trained in float (weights)
  from cbexp.model_io import load_model_dir
  model, loaded_cfg = load_model_dir(tmp_path / "model", numerics="exact")
  assert loaded_cfg.entropy.numerics == "exact"
  compressed = model.compress(image)
  decoded = model.decompress(compressed).numpy()
  spec = {"model_dir": str(tmp_path / "model"), "shape": list(compressed.image_shape),
          "strings": [s.hex() for s in compressed.strings]}
  (tmp_path / "spec.json").write_text(json.dumps(spec))
  env = dict(environment(), TF_ENABLE_ONEDNN_OPTS="0", OMP_NUM_THREADS="1")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if "PYTHONPATH" in env else []))
  result = subprocess.run([sys.executable, "-c", DECODE_SCRIPT, str(tmp_path / "spec.json"),
                           str(tmp_path / "decoded.npy")], env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  np.testing.assert_array_equal(np.load(tmp_path / "decoded.npy"), decoded)


def test_load_model_dir_numerics_override(tmp_path):
  from cbexp.model_io import ModelDirError, load_model_dir, save_model_dir
  cfg = compose(tiny_overrides("hyperprior"))
  save_model_dir(build_model(cfg), cfg, tmp_path)
  with pytest.raises(ModelDirError, match="numerics must be one of"):
    load_model_dir(tmp_path, numerics="int8")


def test_bench_times_float_and_exact_side_by_side(tmp_path):
  """cbexp.bench numerics=float,exact: both variants of the same weights in one process, the
  staged decode of the exact one reproducing its decoder (bench raises otherwise)."""
  import pandas as pd
  from cbexp import bench
  from run_helpers import write_images
  folder = write_images(tmp_path / "images", [(64, 64)])
  out = tmp_path / "bench.csv"
  assert bench.main(["entropy=charm_checkerboard", f"images={folder}", "repeats=1",
                     "numerics=float,exact", f"out={out}", "transform=tiny",
                     "entropy.hidden_filters=[16,16]", *FEW_SLICES["charm_checkerboard"]]) == 0
  summary = pd.read_csv(out).set_index("entropy")
  assert set(summary.index) == {"charm_checkerboard", "charm_checkerboard+exact"}
  per_image = pd.read_csv(tmp_path / "bench_per_image.csv").set_index("entropy")
  assert per_image.loc["charm_checkerboard+exact", "numerics"] == "exact"
  assert per_image.loc["charm_checkerboard+exact", "stage_entropy_parameters_s"] > 0

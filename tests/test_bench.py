"""cbexp.bench on tiny models and tiny images, and the decoding-precision option.
Timings are not asserted (they come from the benchmark command); behaviour is."""
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from cbexp import bench
from cbexp.config import build_model, compose

TINY = ["transform=tiny", "entropy.hidden_filters=[16,16]"]


def tiny(entropy):
  tf.keras.utils.set_random_seed(1)
  model = build_model(compose([f"entropy={entropy}"] + TINY))
  model.build_coders()
  return model


def smooth_image(height, width, seed=0):
  """A smooth image (not noise), so that PSNR differences are meaningful."""
  rng = np.random.default_rng(seed)
  rows, cols = np.meshgrid(np.linspace(0, 3, height), np.linspace(0, 3, width), indexing="ij")
  image = np.stack([np.sin(rows * (c + 1) + cols * rng.uniform(1, 2)) for c in range(3)], -1)
  return np.clip(127.5 + 100 * image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("images")
  Image.fromarray(smooth_image(64, 128, 0)).save(folder / "a.png")
  Image.fromarray(smooth_image(128, 64, 1)).save(folder / "b.png")  # the other orientation
  return folder


def test_bench_command_writes_csvs(image_folder, tmp_path, capsys):
  out = tmp_path / "bench.csv"
  code = bench.main(["entropy=charm,checkerboard", f"images={image_folder}", "repeats=1",
                     f"out={out}"] + TINY)
  assert code == 0
  summary = pd.read_csv(out)
  per_image = pd.read_csv(tmp_path / "bench_per_image.csv")
  assert list(summary.entropy) == ["charm", "checkerboard"]
  assert (summary.num_images == 2).all() and len(per_image) == 4
  assert set(per_image.height) == {64, 128}
  for column in ["encode_s_median", "decode_s_median", "decode_s_q1", "decode_s_q3",
                 "stage_sum_s_median", "decode_over_stage_sum_median",
                 "trainable_parameters", "decode_kmac_per_pixel_total"]:
    assert (summary[column] > 0).all(), column
  for stage in bench.STAGES:
    assert (per_image[f"stage_{stage}_s"] > 0).all(), stage
  # the stage sum is the sum of the stages of one staged decode (medians over 1 repeat)
  stages = per_image[[f"stage_{s}_s" for s in bench.STAGES]].sum(axis=1)
  np.testing.assert_allclose(per_image.stage_sum_s, stages, rtol=1e-9)
  speedup = summary.set_index("entropy").speedup_vs_charm_median
  assert speedup["charm"] == pytest.approx(1.0)
  assert speedup["checkerboard"] > 0
  assert summary.decode_kmac_per_pixel_total.iloc[0] > summary.decode_kmac_per_pixel_total.iloc[1]
  assert summary.cpu.notna().all() and (summary.tf_version == tf.__version__).all()
  assert "untrained weights" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["bogus=1"], "unknown argument 'bogus'"),
    (["repeats=x"], "repeats must be an integer"),
    (["precision=float16"], "precision must be among"),
    (["images=/nonexistent/folder"], "does not exist"),
    (["entropy=nosuchmodel", "max_images=1"], "cannot compose entropy=nosuchmodel"),
])
def test_bench_bad_arguments(argv, message, image_folder, capsys):
  if not any(a.startswith("images=") for a in argv):
    argv = argv + [f"images={image_folder}"]
  assert bench.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("entropy", ["checkerboard"])
def test_float32_decode_matches_tfc_synthesis(entropy):
  """The decoder's materialized-kernel synthesis gives the very same image as tfc's layers."""
  model = tiny(entropy)
  compressed = model.compress(smooth_image(64, 128))
  image, y_hat = model.decompress(compressed, return_latent=True)
  reference = tf.function(model.synthesis)(y_hat)
  reference = tf.saturate_cast(tf.round(reference[0]), tf.uint8)
  np.testing.assert_array_equal(image.numpy(), reference.numpy())


def test_bfloat16_synthesis_same_strings_small_psnr_change():
  model = tiny("checkerboard")
  image = smooth_image(128, 192)
  compressed = model.compress(image)
  reference, y_ref = model.decompress(compressed, return_latent=True)
  model.set_decode_precision("bfloat16")
  assert model.compress(image).strings == compressed.strings  # the encoder is untouched
  decoded, y_hat = model.decompress(compressed, return_latent=True)
  np.testing.assert_array_equal(y_hat.numpy(), y_ref.numpy())  # the entropy decoding is exact
  assert not np.array_equal(decoded.numpy(), reference.numpy())  # bf16 really ran
  psnr = lambda a, b: float(tf.image.psnr(tf.cast(a, tf.float32), tf.cast(b, tf.float32), 255.))
  assert psnr(decoded, reference) > 45.
  assert abs(psnr(image, decoded) - psnr(image, reference)) < 0.05
  # back to float32: the reference again, and the option is validated
  model.set_decode_precision("float32")
  np.testing.assert_array_equal(model.decompress(compressed).numpy(), reference.numpy())
  with pytest.raises(ValueError, match="precision must be one of"):
    model.set_decode_precision("float16")


def test_materialized_transforms_are_bit_identical():
  """g_a, h_a, g_s with kernels computed once give exactly tfc's outputs."""
  from cbexp.precision import MaterializedTransform
  model = tiny("hyperprior")
  x = tf.constant(smooth_image(64, 128)[None], tf.float32)
  y = model.analysis(x)
  for transform, inputs in ((model.analysis, x), (model.hyper_analysis, y),
                            (model.synthesis, y)):
    np.testing.assert_array_equal(MaterializedTransform(transform)(inputs).numpy(),
                                  transform(inputs).numpy())


@pytest.mark.parametrize("entropy", ["checkerboard", "charm"])
def test_encoder_strings_equal_reference_computation(entropy):
  """The codec's graphs (materialized kernels) produce the strings of the plain tfc layers."""
  model = tiny(entropy)
  image = smooth_image(128, 64, seed=2)

  @tf.function
  def reference(x):  # CompressionModel._compress_padded with the tfc layers themselves
    y = model.analysis(x)
    z = model.hyper_analysis(y)
    z_string = model.z_coder.compress(z)
    z_hat = model.z_coder.decompress(z_string, tf.shape(z)[1:-1])
    y_strings, _ = model.entropy_model.compress(y, z_hat)
    return tf.concat([z_string] + y_strings, axis=0)

  expected = [bytes(s) for s in reference(tf.constant(image[None], tf.float32)).numpy()]
  compressed = model.compress(image)
  assert compressed.strings == expected
  np.testing.assert_array_equal(model.decompress(compressed).numpy(),
                                model.decompress(model.compress(image)).numpy())


def test_mlflow_logging(tmp_path):
  import mlflow
  summary = pd.DataFrame([{"entropy": "checkerboard", "precision": "float32",
                           "tf_version": tf.__version__, "cpu": "test cpu", "num_images": 2,
                           "decode_s_median": 0.5, "encode_s_median": 0.25, "note": "x"}])
  summary_path, per_image_path = tmp_path / "bench.csv", tmp_path / "bench_per_image.csv"
  summary.to_csv(summary_path)
  summary.to_csv(per_image_path)
  uri = f"sqlite:///{tmp_path}/mlflow.db"
  bench.log_mlflow(uri, "bench-test", summary, per_image_path, summary_path)
  mlflow.set_tracking_uri(uri)
  runs = mlflow.search_runs(experiment_names=["bench-test"])
  assert len(runs) == 1
  assert runs["metrics.bench/decode_s_median"].iloc[0] == 0.5
  assert runs["tags.entropy"].iloc[0] == "checkerboard"

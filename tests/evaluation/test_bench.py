"""cbexp bench on tiny models and tiny images, and the decoding-precision option.
Timings are not asserted (they come from the benchmark command); behaviour is."""

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from cbexp.cli import bench as bench_command
from cbexp.config import build_model, compose
from cbexp.evaluation import bench

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
  code = bench_command.main(
    ["entropy=charm,checkerboard", f"images={image_folder}", "repeats=1", f"out={out}"] + TINY
  )
  assert code == 0
  summary = pd.read_csv(out)
  per_image = pd.read_csv(tmp_path / "bench_per_image.csv")
  assert list(summary.entropy) == ["charm", "checkerboard"]
  assert (summary.num_images == 2).all() and len(per_image) == 4
  assert set(per_image.height) == {64, 128}
  timed = [f"{what}_median" for what in ("encode_s", "decode_s", "stage_sum_s")]
  timed += ["decode_s_q1", "decode_s_q3", "decode_over_stage_sum_median"]
  for column in timed + ["trainable_parameters", "decode_kmac_per_pixel_total"]:
    assert (summary[column] > 0).all(), column
  for stage in bench.STAGES:
    if stage == "serial_loop":  # the autoregressive model's stage only
      assert (per_image[f"stage_{stage}_s"] == 0).all()
    else:
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


def test_bench_stages_of_the_serial_and_sliced_models_and_bfloat16_columns(
  image_folder, tmp_path, capsys
):
  out = tmp_path / "bench.csv"
  code = bench_command.main(
    [
      "entropy=autoregressive,charm_checkerboard",
      f"images={image_folder}",
      "repeats=1",
      "precision=float32,bfloat16",
      f"out={out}",
    ]
    + TINY
  )
  assert code == 0
  summary = pd.read_csv(out).set_index(["entropy", "precision"])
  per_image = pd.read_csv(tmp_path / "bench_per_image.csv")
  assert len(summary) == 4 and len(per_image) == 8
  # the staged decode ran (and reproduced the decoder's y_hat, else bench raises)
  assert (summary.decode_over_stage_sum_median > 0).all()
  rows = per_image.set_index("entropy")
  assert (rows.loc["autoregressive", "stage_serial_loop_s"] > 0).all()
  assert (rows.loc["autoregressive", "stage_entropy_parameters_s"] == 0).all()
  assert (rows.loc["charm_checkerboard", "stage_serial_loop_s"] == 0).all()
  for stage in ("range_coding", "entropy_parameters"):
    assert (rows.loc["charm_checkerboard", f"stage_{stage}_s"] > 0).all()
  # bfloat16: LRP in bf16 only where it feeds no entropy parameter (autoregressive: yes; with
  # these untrained tiny weights its output can be exactly 0 either way)
  bf16 = summary.xs("bfloat16", level="precision")
  assert 0 <= bf16.loc["autoregressive", "y_hat_max_abs_diff_vs_float32"] < 0.05
  assert bf16.loc["charm_checkerboard", "y_hat_max_abs_diff_vs_float32"] == 0
  # a prediction from a timed convolution: present and positive (its size is the machine's and
  # the moment's: timings are measured by the bench command, not asserted by unit tests)
  assert (bf16.speedup_vs_float32_amdahl_median > 0).all()
  assert (summary.bfloat16_conv_speedup > 0).all()
  assert "bfloat16 on this CPU" in capsys.readouterr().out


def test_bench_bfloat16_on_a_model_directory_with_a_live_lrp(image_folder, tmp_path, capsys):
  """model= and bfloat16 with an LRP whose output is not zero (random biases), so that the
  bfloat16 LRP really changes y_hat: the bench checks symbols against the float32 decoder, not
  y_hat against the encoder's."""
  from cbexp.codec.model_dir import save_model_dir

  overrides = ["entropy=checkerboard"] + TINY
  model = tiny("checkerboard")
  rng = np.random.default_rng(0)
  for variable in model.entropy_model.trainable_variables:
    if "bias" in variable.name:
      variable.assign(rng.normal(0, 0.3, variable.shape).astype(np.float32))
  save_model_dir(model, compose(overrides), tmp_path / "model")
  out = tmp_path / "bench.csv"
  assert (
    bench_command.main(
      [
        f"model={tmp_path / 'model'}",
        f"images={image_folder}",
        "repeats=1",
        "precision=float32,bfloat16",
        f"out={out}",
      ]
    )
    == 0
  )
  summary = pd.read_csv(out).set_index("precision")
  assert bool(summary.loc["float32", "trained_weights"])
  assert 0 < summary.loc["bfloat16", "y_hat_max_abs_diff_vs_float32"] < 0.05
  assert not summary.loc["bfloat16", "y_hat_identical_to_float32"]
  assert summary.loc["bfloat16", "psnr_vs_float32_db_min"] > 40


def test_bench_compares_two_values_of_a_config_key(image_folder, tmp_path):
  # The checkerboard context at the coded positions against the full grid, same weights, side
  # by side in one process (README: decoding speed).
  out = tmp_path / "bench.csv"
  assert (
    bench_command.main(
      [
        "entropy=checkerboard",
        "entropy.context_positions=coded,full_grid",
        f"images={image_folder}",
        "max_images=1",
        "repeats=1",
        f"out={out}",
      ]
      + TINY
    )
    == 0
  )
  summary = pd.read_csv(out).set_index("entropy")
  assert list(summary.index) == ["checkerboard+coded", "checkerboard+full_grid"]
  assert summary.trainable_parameters.nunique() == 1
  kmac = summary.decode_kmac_per_pixel_context
  assert kmac["checkerboard+full_grid"] / kmac["checkerboard+coded"] == pytest.approx(25 / 9)


@pytest.mark.parametrize(
  "argv, message",
  [
    (["model=/nonexistent/model"], "cbexp bench: error: /nonexistent/model: no such model"),
    (["bogus=1"], "unknown argument 'bogus'"),
    (["repeats=x"], "repeats must be an integer"),
    (["precision=float16"], "precision must be among"),
    (["images=/nonexistent/folder"], "does not exist"),
    (["entropy=nosuchmodel", "max_images=1"], "cannot compose entropy=nosuchmodel"),
  ],
)
def test_bench_bad_arguments(argv, message, image_folder, capsys):
  if not any(a.startswith("images=") for a in argv):
    argv = argv + [f"images={image_folder}"]
  assert bench_command.main(argv) == 2
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


def _range_decoder_outputs(model, compressed, monkeypatch):
  """Every tensor the y range decoder returns during one decode (run eagerly, spied): one per
  string (a streamed decoder codes this small image in one band per string)."""
  from cbexp.models.compression import padded_size

  gaussian, outputs = model.entropy_model.gaussian, []
  streamed = model.entropy_model.streams()
  name = "decode_band" if streamed else "decompress"
  original = getattr(gaussian, name)

  def spy(*args):
    result = original(*args)
    outputs.append((result[1] if streamed else result).numpy())
    return result

  monkeypatch.setattr(gaussian, name, spy)
  padded = [padded_size(n) for n in compressed.image_shape]
  model.decompress_padded(tf.constant(compressed.strings), tf.constant(padded))  # eager
  monkeypatch.undo()
  return outputs


@pytest.mark.parametrize("entropy", ["checkerboard", "hyperprior", "charm"])
def test_bfloat16_decoding_same_symbols_small_psnr_change(entropy, monkeypatch):
  model = tiny(entropy)
  # Untrained tiny models can have all-zero hyper features and zero biases, and so an LRP that
  # outputs exactly 0 in any precision: random biases make the LRP's precision visible.
  rng = np.random.default_rng(0)
  for variable in model.entropy_model.trainable_variables:
    if "bias" in variable.name:
      variable.assign(rng.normal(0, 0.3, variable.shape).astype(np.float32))
  model.build_coders()
  image = smooth_image(128, 192)
  compressed = model.compress(image)
  reference, y_ref = model.decompress(compressed, return_latent=True)
  symbols_ref = _range_decoder_outputs(model, compressed, monkeypatch)
  model.set_decode_precision("bfloat16")
  assert model.compress(image).strings == compressed.strings  # the encoder is untouched
  decoded, y_hat = model.decompress(compressed, return_latent=True)
  # The entropy decoding is exact: every range-decoded tensor (q + mean) is bit-identical.
  symbols = _range_decoder_outputs(model, compressed, monkeypatch)
  assert len(symbols) == len(symbols_ref) == model.entropy_model.num_strings
  for a, b in zip(symbols, symbols_ref):
    np.testing.assert_array_equal(a, b)
  lrp_difference = float(np.abs(y_hat.numpy() - y_ref.numpy()).max())
  if model.entropy_model.lrp_outside_entropy_loop:
    assert 0 < lrp_difference < 0.05  # the LRP ran in bfloat16: 0.5 * tanh(.) rounding only
  else:  # ChARM: the LRP conditions later slices, so it stays float32 and y_hat is exact
    assert lrp_difference == 0
  assert not np.array_equal(decoded.numpy(), reference.numpy())  # bf16 really ran
  psnr = lambda a, b: float(tf.image.psnr(tf.cast(a, tf.float32), tf.cast(b, tf.float32), 255.0))
  assert psnr(decoded, reference) > 45.0
  assert abs(psnr(image, decoded) - psnr(image, reference)) < 0.05
  # back to float32: the reference again, and the option is validated
  model.set_decode_precision("float32")
  decoded, y_hat = model.decompress(compressed, return_latent=True)
  np.testing.assert_array_equal(decoded.numpy(), reference.numpy())
  np.testing.assert_array_equal(y_hat.numpy(), y_ref.numpy())
  with pytest.raises(ValueError, match="precision must be one of"):
    model.set_decode_precision("float16")


def test_materialized_transforms_are_bit_identical():
  """g_a, h_a, g_s and the LRP (stride-1: tfc flips the kernel) with kernels computed once
  give exactly tfc's outputs."""
  from cbexp.models.precision import MaterializedTransform

  model = tiny("hyperprior")
  x = tf.constant(smooth_image(64, 128)[None], tf.float32)
  y = model.analysis(x)
  hyper = model.entropy_model.hyper_synthesis(tf.round(model.hyper_analysis(y)))
  for transform, inputs in (
    (model.analysis, x),
    (model.hyper_analysis, y),
    (model.synthesis, y),
    (model.entropy_model.lrp, hyper),
  ):
    np.testing.assert_array_equal(
      MaterializedTransform(transform)(inputs).numpy(), transform(inputs).numpy()
    )


@pytest.mark.parametrize("entropy", ["checkerboard", "charm"])
def test_encoder_strings_equal_reference_computation(entropy):
  """The codec's graphs (materialized kernels) produce the strings of the plain tfc layers."""
  model = tiny(entropy)
  image = smooth_image(128, 64, seed=2)

  @tf.function
  def reference(x):  # CompressionModel.compress_padded with the tfc layers themselves
    y = model.analysis(x)
    z = model.hyper_analysis(y)
    z_string = model.z_coder.compress(z)
    z_hat = model.z_coder.decompress(z_string, tf.shape(z)[1:-1])
    y_strings, _ = model.entropy_model.compress(y, z_hat)
    return tf.concat([z_string] + y_strings, axis=0)

  expected = [bytes(s) for s in reference(tf.constant(image[None], tf.float32)).numpy()]
  compressed = model.compress(image)
  assert compressed.strings == expected
  np.testing.assert_array_equal(
    model.decompress(compressed).numpy(), model.decompress(model.compress(image)).numpy()
  )


def test_mlflow_logging(tmp_path):
  import mlflow

  summary = pd.DataFrame(
    [
      {
        "entropy": "checkerboard",
        "precision": "float32",
        "tf_version": tf.__version__,
        "cpu": "test cpu",
        "num_images": 2,
        "decode_s_median": 0.5,
        "encode_s_median": 0.25,
        "note": "x",
      }
    ]
  )
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


def test_trained_models_of_one_entropy_model_get_distinct_labels():
  """The bench keys its rows by label: two checkerboard models on two backbones (or twice the
  same) were merged into one row each before."""
  from types import SimpleNamespace

  from cbexp.evaluation.bench import Subject, distinct_names

  def subject(entropy, transform):
    cfg = SimpleNamespace(transform=SimpleNamespace(name=transform))
    return Subject(entropy, None, cfg, True)

  subjects = distinct_names(
    [
      subject("checkerboard", "mbt2018"),
      subject("checkerboard", "cheng2020"),
      subject("autoregressive", "mbt2018"),
      subject("hyperprior", "ms2020"),
      subject("hyperprior", "ms2020"),
    ]
  )
  assert [s.name for s in subjects] == [
    "checkerboard (mbt2018)",
    "checkerboard (cheng2020)",
    "autoregressive",
    "hyperprior (ms2020) #4",
    "hyperprior (ms2020) #5",
  ]

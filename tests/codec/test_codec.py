"""In process: exported models, model fingerprints, the codec's refusals and its inputs.

The command line end to end is in test_codec_cli.py; here the same functions run without a
subprocess (each of those costs a TensorFlow start-up)."""

import math
import re

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cbexp.cli.codec import main as codec_main
from cbexp.cli.export import main as export_main
from cbexp.codec import codec
from cbexp.codec import savedmodel as export
from cbexp.codec.bitstream import Bitstream
from cbexp.codec.codec import Codec, CodecError
from cbexp.codec.model_dir import save_model_dir
from cbexp.config import build_model, compose
from cbexp.constants import PAD_MULTIPLE
from cbexp.images import TENSOR_ALIGNMENT, load_image
from cbexp.load import LoadError, load_codec
from cbexp.models.compression import Compressed
from helpers.models import tiny_overrides

BASE_ENTROPY_MODELS = ["hyperprior", "charm", "checkerboard"]


def random_image(height, width, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(model_factory):
  """The tiny checkerboard model, its config and an in-memory codec over it."""
  overrides = tiny_overrides("checkerboard")
  model = model_factory(overrides)
  cfg = compose(overrides)
  return model, cfg, Codec.from_model(model, cfg)


@pytest.fixture(scope="module")
def tiny_export(tiny, tmp_path_factory):
  model, cfg, _ = tiny
  path = tmp_path_factory.mktemp("export") / "tiny_checkerboard"
  export.save(model, cfg, path)
  return path


@pytest.fixture(scope="module")
def other_weights(tiny):
  """Same config as ``tiny``, other (random) weights."""
  _, cfg, _ = tiny
  tf.random.set_seed(1)
  model = build_model(cfg)
  model.build_coders()
  return model, cfg, Codec.from_model(model, cfg, "memory, other weights")


# --- the property: decode(encode(x)) is x's shape and exactly the encoder's reconstruction -----
@pytest.mark.parametrize("entropy", BASE_ENTROPY_MODELS)
def test_decode_reproduces_the_encoders_reconstruction(entropy, model_factory):
  overrides = tiny_overrides(entropy)
  model = model_factory(overrides)
  tiny_codec = Codec.from_model(model, compose(overrides))

  @settings(
    max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
  )
  @given(
    height=st.integers(1, 80),
    width=st.integers(1, 80),
    seed=st.integers(0, 2**32 - 1),
    fill=st.sampled_from(["noise", "flat", "ramp"]),
  )
  def check(height, width, seed, fill):
    x = random_image(height, width, seed)
    if fill == "flat":
      x[:] = x[0, 0]
    elif fill == "ramp":
      x = np.broadcast_to(np.linspace(0, 255, width, dtype=np.uint8)[None, :, None], x.shape)
    stream = tiny_codec.encode(x)
    decoded = tiny_codec.decode(Bitstream.from_bytes(stream.to_bytes()))
    assert decoded.shape == x.shape and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, tiny_codec.encoder_reconstruction(x))
    # The codec functions are the model's own coding path: same strings, same latents.
    compressed = model.compress(x)
    assert list(stream.strings) == compressed.strings
    _, y_hat = model.decompress(
      Compressed(list(stream.strings), (height, width)), return_latent=True
    )
    np.testing.assert_array_equal(y_hat, compressed.y_hat)

  check()


def test_prepare_traces_what_the_coding_runs_before_it_runs(tiny, tiny_export):
  """``Codec.prepare`` traces the function the next encode (or decode of a file) runs, so that
  `cbexp codec` gives what tracing freed back before coding (release_freed_memory): the call
  itself traces nothing more. An export's functions are traced already; prepare works too."""
  model, cfg, _ = tiny
  codec = Codec.from_model(model, cfg)  # functions of its own, not yet traced
  x = random_image(70, 33)
  codec.prepare()
  assert codec.module.compress.experimental_get_tracing_count() == 1
  stream = codec.encode(x)
  assert codec.module.compress.experimental_get_tracing_count() == 1
  assert codec.module.decompress.experimental_get_tracing_count() == 0
  codec.prepare(stream)
  assert codec.module.decompress.experimental_get_tracing_count() == 1
  decoded = codec.decode(stream)
  assert codec.module.decompress.experimental_get_tracing_count() == 1
  loaded = load_codec(tiny_export)
  loaded.prepare()
  loaded.prepare(stream)
  np.testing.assert_array_equal(loaded.decode(loaded.encode(x)), decoded)


# --- exports --------------------------------------------------------------------------------
def test_export_loads_without_config_and_codes_identically(tiny, tiny_export):
  model, _, memory_codec = tiny
  loaded = load_codec(tiny_export)
  assert (loaded.entropy_model, loaded.fingerprint, loaded.num_strings, loaded.pad_multiple) == (
    "checkerboard",
    memory_codec.fingerprint,
    3,
    64,
  )
  for shape in [(1, 1), (64, 64), (70, 33)]:
    x = random_image(*shape, seed=sum(shape))
    stream = loaded.encode(x)
    assert stream == memory_codec.encode(x)
    decoded = loaded.decode(stream)
    expected = model.decompress(Compressed(list(stream.strings), shape)).numpy()
    np.testing.assert_array_equal(decoded, expected)  # the in-memory decoder's image


def test_export_refuses_damaged_weights(tiny_export):
  module = export.load(tiny_export)
  export.verify_fingerprint(module)
  module.weights[3].assign_add(tf.ones_like(module.weights[3]) * 1e-3)
  with pytest.raises(export.ExportError, match="do not match the stored fingerprint"):
    export.verify_fingerprint(module)


def test_export_refuses_non_empty_output(tiny, tmp_path):
  model, cfg, _ = tiny
  (tmp_path / "something").write_text("x")
  with pytest.raises(export.ExportError, match="not an empty folder"):
    export.save(model, cfg, tmp_path)


def exit_status(main, argv):
  """A command's exit status, whether it returns it or argparse exits."""
  try:
    return main(argv)
  except SystemExit as stop:
    return stop.code


def test_export_command_refuses_bad_arguments(tmp_path, capsys):
  cases = [
    ([], "required: --out"),
    (["--out", str(tmp_path / "a"), "entropy=nonesuch"], "known entropy models are .*charm"),
    (["--out", str(tmp_path / "b"), "--from", str(tmp_path / "none")], "no such model"),
    (
      ["--out", str(tmp_path / "c"), "--from", str(tmp_path), "entropy=charm"],
      "cannot change a trained model",
    ),
  ]
  for argv, message in cases:
    assert exit_status(export_main, argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and re.search(message, err), err
  assert not any(p.name in "abc" for p in tmp_path.iterdir())


def test_load_refuses_what_is_not_an_export(tmp_path):
  with pytest.raises(export.ExportError, match="not a cbexp export"):
    export.load(tmp_path)
  with pytest.raises(LoadError, match="no such model"):
    load_codec(tmp_path / "missing")
  with pytest.raises(LoadError, match="not a model"):
    load_codec(tmp_path)


def test_fingerprint_covers_weights_and_config(tiny, other_weights):
  model, cfg, memory_codec = tiny
  weights, tables = export.split_variables(model)
  assert len(tables) == 4 and all("cdf" in v.name for v in tables)  # z and y tables
  assert {id(v) for v in weights + tables} == {id(v) for v in model.variables}
  assert len(weights) + len(tables) == len(model.variables)
  text = export.config_json(cfg)
  assert export.fingerprint(text, weights + tables) == memory_codec.fingerprint
  assert export.fingerprint(text, weights) != memory_codec.fingerprint  # the tables count too
  assert other_weights[2].fingerprint != memory_codec.fingerprint
  other_config = export.config_json(compose(tiny_overrides("checkerboard", "lmbda=0.02")))
  assert export.fingerprint(other_config, weights + tables) != memory_codec.fingerprint
  # Only the model keys count: other settings (of a run, say) do not change the model.
  assert export.config_json(compose(tiny_overrides("checkerboard", "+run_note=x"))) == text


def test_export_command_on_a_model_directory_gives_the_same_codec(tiny, tmp_path):
  model, cfg, memory_codec = tiny
  save_model_dir(model, cfg, tmp_path / "model")
  assert export_main(["--out", str(tmp_path / "export"), "--from", str(tmp_path / "model")]) == 0
  exported = load_codec(tmp_path / "export")
  assert exported.fingerprint == memory_codec.fingerprint
  x = random_image(40, 50)
  assert exported.encode(x) == memory_codec.encode(x)


# --- refusals -------------------------------------------------------------------------------
def test_other_weights_are_refused_naming_both_fingerprints(tiny, other_weights):
  _, _, memory_codec = tiny
  stream = memory_codec.encode(random_image(30, 30))
  with pytest.raises(CodecError, match="model mismatch") as error:
    other_weights[2].decode(stream)
  assert memory_codec.fingerprint in str(error.value)
  assert other_weights[2].fingerprint in str(error.value)


def test_other_entropy_model_is_refused_naming_both(tiny, model_factory):
  _, _, memory_codec = tiny
  overrides = tiny_overrides("charm")
  charm = Codec.from_model(model_factory(overrides), compose(overrides))
  stream = memory_codec.encode(random_image(30, 30))
  with pytest.raises(
    CodecError, match="coded with entropy model 'checkerboard'.*this model is 'charm'"
  ):
    charm.decode(stream)


def test_string_count_mismatch_is_refused(tiny):
  _, _, memory_codec = tiny
  stream = memory_codec.encode(random_image(30, 30))
  fewer = Bitstream(
    stream.entropy_model, stream.fingerprint, stream.height, stream.width, stream.strings[:2]
  )
  with pytest.raises(CodecError, match="the file has 2 strings.*codes 3"):
    memory_codec.decode(Bitstream.from_bytes(fewer.to_bytes()))


def test_pixel_limit_is_named_and_counts_the_padded_size(tiny, tmp_path):
  """The limit counts what the model allocates for: the image padded to a multiple of 64."""
  _, _, memory_codec = tiny
  limited = Codec(memory_codec.module, "memory", max_pixels=64 * 128)
  with pytest.raises(
    CodecError,
    match=r"10x130 pixels, coded as 64x192 = 12288 pixels \(padded "
    r"to a multiple of 64\), is above the limit of 8192",
  ):
    limited.encode(random_image(130, 10))
  limited.encode(random_image(128, 64))
  with pytest.raises(CodecError, match="above the limit of 8192 pixels"):  # on decode too
    limited.decode(memory_codec.encode(random_image(65, 65)))
  Image.fromarray(random_image(20, 20)).save(tmp_path / "big.png")
  with pytest.raises(
    CodecError,
    match="big.png: image of 20x20 pixels, coded as 64x64 = 4096 "
    "pixels .* is above the limit of 100 pixels",
  ):
    codec.describe_image_file(tmp_path / "big.png", max_pixels=100)
  assert PAD_MULTIPLE == memory_codec.pad_multiple  # known before TensorFlow loads


@pytest.mark.parametrize(
  "array",
  [
    np.zeros((4, 4, 3), np.float32),
    np.zeros((4, 4), np.uint8),
    np.zeros((4, 4, 4), np.uint8),
    np.zeros((0, 4, 3), np.uint8),
  ],
)
def test_bad_arrays_are_refused(tiny, array):
  with pytest.raises(CodecError):
    tiny[2].encode(array)


# --- inputs: PNG and JPEG, grayscale, RGBA, 16-bit --------------------------------------------
def _save(path, array, mode=None, **kwargs):
  Image.fromarray(array, mode).save(path, **kwargs) if mode else Image.fromarray(array).save(
    path, **kwargs
  )
  return path


@pytest.mark.parametrize(
  "kind,note",
  [
    ("rgb.png", ""),
    ("rgb.jpg", ""),
    ("gray.png", "converted from L to RGB"),
    ("rgba.png", "alpha dropped"),
    ("gray16.png", "16-bit grayscale, to 8-bit RGB"),
    ("gray16.pgm", "16-bit grayscale, to 8-bit RGB"),  # Pillow's 32-bit mode, a 16-bit range
  ],
)
def test_accepted_image_files(kind, note, tiny, tmp_path):
  rgb = random_image(21, 13)
  path = tmp_path / kind
  if kind.startswith("rgb."):
    _save(path, rgb)
  elif kind == "gray.png":
    _save(path, rgb[..., 0])
  elif kind == "rgba.png":
    _save(path, np.concatenate([rgb, rgb[..., :1]], axis=-1))
  else:
    _save(path, rgb[..., 0].astype(np.uint16) * 257)
  width, height, mode = codec.describe_image_file(path, codec.DEFAULT_MAX_PIXELS)
  assert (width, height) == (13, 21)
  assert note in codec.conversion_note(mode) and (note or codec.conversion_note(mode) == "")
  image = load_image(path)
  assert image.shape == (21, 13, 3) and image.dtype == np.uint8
  if kind in ("rgb.png", "rgba.png"):
    np.testing.assert_array_equal(image, rgb)
  if kind in ("gray.png", "gray16.png", "gray16.pgm"):
    np.testing.assert_array_equal(image, np.repeat(rgb[..., :1], 3, axis=-1))
  assert tiny[2].decode(tiny[2].encode(image)).shape == image.shape


def test_an_image_file_is_coded_from_its_own_memory(tiny, tmp_path):
  """load_image gives an aligned array that the codec reads without a copy (at the pixel limit
  a copy is 200 MB of the coding's peak); any other array is copied, with the same strings."""
  image = load_image(_save(tmp_path / "rgb.png", random_image(21, 13)))
  assert image.ctypes.data % TENSOR_ALIGNMENT == 0 and image.flags.writeable
  shared = codec.image_tensor(image)
  image[0, 0, 0] ^= 0xFF  # the tensor sees the change: the same memory
  assert shared.numpy()[0, 0, 0] == image[0, 0, 0]
  image[0, 0, 0] ^= 0xFF
  strings = tiny[2].encode(image).strings
  unaligned = np.empty(image.size + 1, np.uint8)[1:].reshape(image.shape)
  unaligned[...] = image
  read_only = image.copy()
  read_only.flags.writeable = False
  for other in (unaligned, np.asfortranarray(image), read_only):
    copied = codec.image_tensor(other)
    if other.flags.writeable:
      other[0, 0, 0] ^= 0xFF  # a copy does not see it
      assert copied.numpy()[0, 0, 0] == image[0, 0, 0]
      other[0, 0, 0] ^= 0xFF
    assert tiny[2].encode(other).strings == strings


# --- eval -----------------------------------------------------------------------------------
def test_eval_command_reports_real_rates_and_qualities(tiny, tmp_path, capsys, kodak_image):
  import pandas as pd

  model, cfg, memory_codec = tiny
  save_model_dir(model, cfg, tmp_path / "model")
  folder = tmp_path / "images"
  folder.mkdir()
  crops = {"a.png": kodak_image[:170, :200], "b.png": kodak_image[200:230, 300:340]}
  for name, crop in crops.items():
    _save(folder / name, np.ascontiguousarray(crop))
  csv = tmp_path / "per_image.csv"
  assert (
    codec_main(["eval", "--model", str(tmp_path / "model"), str(folder), "--csv", str(csv)]) == 0
  )
  out = capsys.readouterr().out
  table = pd.read_csv(csv)
  assert list(table.image) == ["a.png", "b.png"]
  for row in table.itertuples():
    crop = crops[row.image]
    data = memory_codec.encode(crop).to_bytes()
    assert row.bytes == len(data)
    assert row.bpp == pytest.approx(8 * len(data) / (row.height * row.width), rel=1e-12)
    decoded = memory_codec.decode(Bitstream.from_bytes(data))
    psnr = float(tf.image.psnr(crop.astype(np.float32), decoded.astype(np.float32), 255.0))
    assert row.psnr == pytest.approx(psnr, rel=1e-6)
    assert row.encode_s > 0 and row.decode_s > 0
    assert f"{row.bpp:.4f}" in out and f"{row.psnr:.3f}" in out
  a = table.set_index("image").loc["a.png"]
  ms_ssim = float(
    tf.image.ssim_multiscale(
      crops["a.png"].astype(np.float32),
      memory_codec.decode(memory_codec.encode(crops["a.png"])).astype(np.float32),
      255.0,
    )
  )
  assert a.ms_ssim == pytest.approx(ms_ssim, rel=1e-6)
  assert a.ms_ssim_db == pytest.approx(-10 * math.log10(1 - ms_ssim), rel=1e-6)
  assert math.isnan(table.set_index("image").loc["b.png"].ms_ssim)  # 40x30: too small
  mean_line = next(line for line in out.splitlines() if line.startswith("mean"))
  assert f"{table.bpp.mean():.4f}" in mean_line and f"{table.psnr.mean():.3f}" in mean_line

"""No silent garbage. A decode that lost sync without an error (its strings
still pass the re-encoding check) is refused by the symbol checks of .cbx format 3 instead of
writing a wrong image; tfc's own range-decoder errors are one line naming the likely cause;
files of format 1 and exports of format 2 (before the checks) still decode, files of format 2
(checks of the whole string) decode with a model directory.

The desynchronisation is made on purpose: a decoder whose coded scale index at one element is
moved (what another numeric environment does when an index lands on the other side of an
integer), on a tiny hyperprior model whose latents and scale indexes spread over the table as in
a trained model (an untrained one codes nearly all zeros, which such a move rarely changes)."""

import dataclasses
import re
import types

import numpy as np
import pytest
import tensorflow as tf

from cbexp.cli.codec import main as codec_main
from cbexp.codec import bitstream, codec
from cbexp.codec import savedmodel as export
from cbexp.codec.bitstream import Bitstream
from cbexp.codec.codec import STRINGS_REFUSED, Codec, CodecError
from cbexp.codec.model_dir import save_model_dir
from cbexp.config import build_model, compose
from cbexp.entropy import base
from cbexp.entropy.base import GaussianConditional
from cbexp.load import load_codec
from cbexp.models.compression import SymbolCheckError, pad_to_multiple
from helpers.codec_cli import assert_refused, run_codec
from helpers.models import ENTROPY_MODELS, tiny_overrides

ENVIRONMENT = "numeric environment differs from the encoder's"


def random_image(height, width, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def without_checks(stream):
  """The same stream as a format-1 file would hold it (no symbol checks)."""
  return dataclasses.replace(stream, checks=None)


def with_check(stream, i, check):
  checks = list(stream.checks)
  checks[i] = check
  return dataclasses.replace(stream, checks=tuple(checks))


def flipped(check):
  return bytes([check[0] ^ 0x01]) + check[1:]


@pytest.fixture(scope="module")
def spread():
  """A tiny hyperprior model with latents spread by the last analysis bias (N(0, 10)) and scale
  indexes by the entropy-parameter bias (20 to 45 of 64), its codec and a coded 64x64 image."""
  overrides = tiny_overrides("hyperprior")
  cfg = compose(overrides)
  tf.keras.utils.set_random_seed(0)
  model = build_model(cfg)
  rng = np.random.default_rng(0)
  bias = next(v for v in model.analysis.layers[-1].variables if v.name.endswith("bias:0"))
  bias.assign(rng.normal(0.0, 10.0, bias.shape).astype(np.float32))
  out = model.entropy_model.entropy_parameters.out.bias  # [means, scale indexes]
  depth = out.shape[0] // 2
  out.assign(np.concatenate([np.zeros(depth), rng.uniform(20.0, 45.0, depth)]).astype(np.float32))
  model.build_coders()
  tiny_codec = Codec.from_model(model, cfg)
  image = random_image(64, 64, seed=1)
  stream = tiny_codec.encode(image)
  return types.SimpleNamespace(model=model, cfg=cfg, codec=tiny_codec, image=image, stream=stream)


# Elements (counted from the end of the string) and index moves tried.
MOVES = [(at, by) for at in (1, 2, 3, 5, 8, 13, 20) for by in (1.0, -1.0, 3.0, -3.0)]


@pytest.fixture(scope="module")
def moved_decoder(spread):
  """The same model's decoder with the coded scale index of one element moved (``at`` from the
  end of each string, by ``by``; variables, so one trace serves every move) and what it decodes
  from ``spread.stream`` for every move of MOVES: (image, decoder's checks) or tf's error."""
  at, by = tf.Variable(1), tf.Variable(0.0)
  original = GaussianConditional.coded_indexes

  def moved(self, scale_indexes):
    indexes = original(self, scale_indexes)
    flat = tf.reshape(indexes, [-1])
    flat = tf.tensor_scatter_nd_add(flat, [[tf.size(flat) - at]], [by])
    return tf.clip_by_value(tf.reshape(flat, tf.shape(indexes)), 0.0, self.num_scales - 1.0)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(GaussianConditional, "coded_indexes", moved)
    decoder = Codec.from_model(spread.model, spread.cfg, "memory, moved indexes")
    unmoved = decoder.decode(spread.stream)  # traced here, with the move (by 0: none)
  np.testing.assert_array_equal(unmoved, spread.codec.decode(spread.stream))
  stream = spread.stream
  results = {}
  for move in MOVES:
    at.assign(move[0])
    by.assign(move[1])
    try:
      out = decoder.module.decompress(
        tf.constant(stream.strings), tf.constant([stream.height, stream.width])
      )
      results[move] = (out["image"].numpy(), tuple(bytes(c) for c in out["checks"].numpy()))
    except tf.errors.InvalidArgumentError as error:
      results[move] = str(error)
  return types.SimpleNamespace(decoder=decoder, at=at, by=by, results=results)


def use_move(moved_decoder, move):
  moved_decoder.at.assign(move[0])
  moved_decoder.by.assign(move[1])


def test_checks_are_the_models_and_the_file_is_format_3(spread):
  stream = spread.stream
  assert stream.version == 3 and len(stream.checks) == 2
  assert Bitstream.from_bytes(stream.to_bytes()) == stream
  compressed = spread.model.compress(spread.image)  # the model's own coding graph
  assert list(stream.strings) == compressed.strings and list(stream.checks) == compressed.checks
  np.testing.assert_array_equal(
    spread.codec.decode(stream), spread.codec.encoder_reconstruction(spread.image)
  )
  # A latent spread over the table: most symbols are not zero (the point of this fixture).
  y_hat = compressed.y_hat.numpy()
  assert np.mean(np.abs(np.round(y_hat)) > 1) > 0.5


def test_a_desynchronised_decode_that_passes_the_strings_check_is_refused(spread, moved_decoder):
  reference = spread.codec.decode(spread.stream)
  decoded = {move: r for move, r in moved_decoder.results.items() if not isinstance(r, str)}
  wrong = [move for move, (image, _) in decoded.items() if not np.array_equal(image, reference)]
  # Some moves desynchronise the decoder and still pass the strings' re-encoding check: without
  # symbol checks, a wrong image and no error.
  assert wrong, moved_decoder.results
  for move, (image, checks) in decoded.items():  # never a wrong image with the right checks
    assert (checks == spread.stream.checks) == (move not in wrong), move
  use_move(moved_decoder, wrong[0])
  silent = moved_decoder.decoder.decode(without_checks(spread.stream))  # a format-1 file
  assert not np.array_equal(silent, reference)
  with pytest.raises(CodecError) as error:
    moved_decoder.decoder.decode(spread.stream)
  message = str(error.value)
  assert "\n" not in message
  assert re.match(
    r"cannot decode: symbol check failed for string 1 \(y string 1 of 1\), 1 of 2 "
    r"strings differ \(stored [0-9a-f]{8}, decoded [0-9a-f]{8}\): .*"
    + ENVIRONMENT
    + r" \(thread count, oneDNN, instruction set, GPU\); decode on the encoder's "
    r"kind of machine, or encode with an entropy.numerics=exact model",
    message,
  ), message


def test_the_models_own_decompress_compares_the_checks(spread):
  compressed = spread.model.compress(spread.image)
  np.testing.assert_array_equal(
    spread.model.decompress(compressed), spread.codec.decode(spread.stream)
  )
  compressed.checks[1] = flipped(compressed.checks[1])
  with pytest.raises(SymbolCheckError, match=r"string 1 \(y string 1 of 1\)"):
    spread.model.decompress(compressed)


def test_tfcs_range_decoder_error_is_one_line_naming_the_cause(spread, moved_decoder):
  """tfc's own sanity check ("Graph execution error" with "Sanity check failed.") fires on many
  moves: the codec says what it likely means, in one line."""
  sanity = [
    move
    for move, r in moved_decoder.results.items()
    if isinstance(r, str) and "Sanity check failed" in r
  ]
  assert sanity, moved_decoder.results
  use_move(moved_decoder, sanity[0])
  for stream in (spread.stream, without_checks(spread.stream)):
    with pytest.raises(CodecError) as error:
      moved_decoder.decoder.decode(stream)
    assert str(error.value) == f"cannot decode: {STRINGS_REFUSED}"
  assert ENVIRONMENT in STRINGS_REFUSED and "entropy.numerics=exact" in STRINGS_REFUSED


def test_a_model_that_records_no_check_fails_loudly(spread, monkeypatch):
  monkeypatch.setattr(GaussianConditional, "record_check", lambda self, *parts: None)
  x = tf.zeros([1, 64, 64, 3])
  with pytest.raises(
    RuntimeError, match="'hyperprior' entropy model recorded 0 symbol checks for its 1 strings"
  ):
    spread.model.compress_padded(x)


# --- the command line ---------------------------------------------------------------------------
def test_a_file_whose_symbol_check_fails_is_refused_on_the_command_line(tiny_files, tmp_path):
  """A check changed and the file's CRC recomputed: an intact-looking file whose decode does not
  reproduce it. Exit status 2, one line naming the string, no output file."""
  folder, stream = tiny_files
  assert stream.version == 3 and (folder / "good.cbx").read_bytes()[4] == 3
  (tmp_path / "in.cbx").write_bytes(with_check(stream, 2, flipped(stream.checks[2])).to_bytes())
  result = run_codec("decompress", "--model", folder / "model", "in.cbx", "out.png", cwd=tmp_path)
  assert result.returncode == 2
  assert_refused(
    result,
    tmp_path / "out.png",
    r"^cbexp codec: error: cannot decode: symbol check failed for string 2 "
    r"\(y string 2 of 2\), 1 of 3 strings differ .*" + ENVIRONMENT,
  )


def test_the_z_check_and_format_1_files_in_process(tiny_files, tmp_path, capsys):
  from PIL import Image

  folder, stream = tiny_files
  model = str(folder / "model")
  (tmp_path / "z.cbx").write_bytes(with_check(stream, 0, flipped(stream.checks[0])).to_bytes())
  assert (
    codec_main(["decompress", "--model", model, str(tmp_path / "z.cbx"), str(tmp_path / "z.png")])
    == 2
  )
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and "symbol check failed for the z string" in err, err
  assert not (tmp_path / "z.png").exists()
  # A format-1 file (the layout before the checks) decodes to the same image as format 3.
  bitstream.write(tmp_path / "v1.cbx", without_checks(stream))
  assert (tmp_path / "v1.cbx").read_bytes()[4] == 1
  assert (tmp_path / "v1.cbx").stat().st_size == (folder / "good.cbx").stat().st_size - 4 * 3
  for name in ("v1", "good"):
    source = tmp_path / "v1.cbx" if name == "v1" else folder / "good.cbx"
    assert (
      codec_main(["decompress", "--model", model, str(source), str(tmp_path / f"{name}.png")]) == 0
    ), capsys.readouterr().err
  np.testing.assert_array_equal(
    np.asarray(Image.open(tmp_path / "v1.png")), np.asarray(Image.open(tmp_path / "good.png"))
  )


@pytest.mark.parametrize("entropy", ENTROPY_MODELS)
def test_every_entropy_model_records_one_check_per_string(entropy, model_factory):
  """Each model codes its strings through GaussianConditional (the autoregressive model records
  its own), in string order: encoder and decoder agree on every check, and a changed check of
  the last string is refused naming it. (The codec and the command line run these very graphs:
  test_codec, test_codec_cli; every round trip of test_entropy_models compares the checks too.)"""
  model = model_factory(tiny_overrides(entropy))
  compressed = model.compress(random_image(40, 50, seed=3))
  assert len(compressed.checks) == 1 + model.entropy_model.num_strings
  assert all(len(c) == bitstream.SYMBOL_CHECK_BYTES for c in compressed.checks)
  reference = model.decompress(compressed).numpy()  # the checks are compared
  np.testing.assert_array_equal(
    model.decompress(dataclasses.replace(compressed, checks=None)).numpy(), reference
  )
  last = len(compressed.checks) - 1
  compressed.checks[last] = flipped(compressed.checks[last])
  with pytest.raises(
    SymbolCheckError, match=rf"string {last} \(y string {last} of {last}\), 1 of {last + 1}"
  ):
    model.decompress(compressed)


# --- exports of format 2 (before the checks) -----------------------------------------------------
def _old_format_export(model, cfg, path):
  """An export as format 2 wrote it: compress -> strings, decompress -> image."""
  module = export.build_codec_functions(model, cfg)
  compress, decompress = module.compress, module.decompress

  @tf.function(input_signature=compress.input_signature)
  def old_compress(image):
    return compress(image)["strings"]

  @tf.function(input_signature=decompress.input_signature)
  def old_decompress(strings, image_shape):
    return decompress(strings, image_shape)["image"]

  module.compress, module.decompress = old_compress, old_decompress
  module.format_version.assign(2)
  export.save(model, cfg, path, module=module)
  return path


def test_an_export_of_format_2_decodes_format_1_and_asks_for_a_new_export(spread, tmp_path, capsys):
  from cbexp.tracking.pyfunc import EXPORT, MODEL_DIR, CodecModel

  assert export.EXPORT_FORMAT_VERSION == 4
  path = _old_format_export(spread.model, spread.cfg, tmp_path / "old_export")
  old = load_codec(path)
  assert not old.symbol_checks and old.fingerprint == spread.codec.fingerprint
  np.testing.assert_array_equal(
    old.decode(without_checks(spread.stream)), spread.codec.decode(spread.stream)
  )
  message = (
    r"this export \(format 2\) predates the symbol checks of \.cbx format 2 and cannot "
    r"(write them|check the symbols of a \.cbx file of format 2); export the model again"
  )
  with pytest.raises(CodecError, match=message) as error:
    old.encode(spread.image)
  assert "cannot write them" in str(error.value)
  with pytest.raises(CodecError, match=message) as error:
    old.decode(spread.stream)
  assert "cannot check the symbols" in str(error.value)
  (tmp_path / "in.png").write_bytes(codec.encode_png(spread.image))
  assert (
    codec_main(
      ["compress", "--model", str(path), str(tmp_path / "in.png"), str(tmp_path / "out.cbx")]
    )
    == 2
  )
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and re.search(message, err), err
  assert not (tmp_path / "out.cbx").exists()
  # An MLflow model logged with such an export codes through its model directory instead.
  save_model_dir(spread.model, spread.cfg, tmp_path / "model")
  pyfunc = CodecModel()
  pyfunc.load_context(
    types.SimpleNamespace(artifacts={EXPORT: str(path), MODEL_DIR: str(tmp_path / "model")})
  )
  assert pyfunc.codec.symbol_checks
  np.testing.assert_array_equal(
    pyfunc.predict(None, spread.image)["reconstruction"], spread.codec.decode(spread.stream)
  )


def test_long_high_rate_strings_of_the_top_table_symbols_are_accepted():
  """A model must decode its own files. tfc's range coder narrows its interval by
  floor(s*v/2**p) - floor(s*u/2**p), which for the top of a table is more than s*m/2**p: over
  786,432 such symbols the string holds about 400 bits less than their information content, so
  the strings check bounds the cost from tfc's arithmetic (base.CodingCost), not by it."""
  gaussian = GaussianConditional()
  gaussian.build_coder()
  shape = [1, 64, 64, 192]
  rng = np.random.default_rng(0)
  precision, _, lengths, offsets = gaussian._coder_rows()
  top = offsets[0] + lengths[0] - 3  # the largest value in the smallest scale's table
  y = (np.full(shape, top) - rng.integers(0, 2, shape)).astype(np.float32)
  indexes, loc = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
  string = gaussian.compress(y, indexes, loc)
  information = gaussian.table_bits(y, indexes, loc)[0]
  capacity = 8 * len(string.numpy()[0]) + base.TRAILING_ZEROS_BITS
  assert information > capacity  # the case the information content refuses
  np.testing.assert_array_equal(gaussian.decompress(string, indexes, loc).numpy(), y)


# --- .cbx format 2 (checks of the whole string) and exports of format 3 ---------------------------
def test_format_3_checks_fold_the_rows_and_format_2_files_decode_with_a_model_directory(
  spread, tmp_path
):
  """Format 3's check is the fingerprint of the fingerprints of the rows (what a stream computes
  band by band); format 2's of the whole string. A model directory's codec decodes a file of
  either, comparing the checks of its format (a flipped one is refused); an export of format 4
  refuses a format 2 file in one line naming what decodes it."""
  symbols = tf.constant(np.arange(2 * 3 * 4 * 5).reshape([2, 3, 4, 5]) - 50, tf.int32)
  rows = tf.reshape(tf.fingerprint(tf.reshape(symbols, [6, -1])), [2, -1])
  np.testing.assert_array_equal(
    GaussianConditional.symbol_check(symbols), tf.fingerprint(rows)[:, :4]
  )
  flat = tf.reshape(symbols, [2, -1])
  np.testing.assert_array_equal(
    GaussianConditional.symbol_check_format2(symbols), tf.fingerprint(flat)[:, :4]
  )
  with spread.model.format2_checks():  # the checks an encoder of format 2 wrote
    strings, _, checks = spread.model.compress_padded(pad_to_multiple(spread.image, tf.uint8))
  old = dataclasses.replace(
    spread.stream, checks=tuple(bytes(c) for c in checks.numpy()), check_format=2
  )
  assert old.checks != spread.stream.checks and old.strings == tuple(strings.numpy())
  expected = spread.codec.decode(spread.stream)
  np.testing.assert_array_equal(spread.codec.decode(old), expected)
  with pytest.raises(CodecError, match="symbol check failed for string 1"):
    spread.codec.decode(with_check(old, 1, flipped(old.checks[1])))
  save_model_dir(spread.model, spread.cfg, tmp_path / "model")
  export.save(spread.model, spread.cfg, tmp_path / "export")
  exported = load_codec(tmp_path / "export")
  np.testing.assert_array_equal(exported.decode(spread.stream), expected)
  with pytest.raises(CodecError, match="file is of format 2 .*decode it with the model directory"):
    exported.decode(old)
  bitstream.write(tmp_path / "old.cbx", old)
  assert load_codec(tmp_path / "model").decode(bitstream.read(tmp_path / "old.cbx")[0]).shape


def test_an_export_of_format_3_writes_format_2_and_refuses_format_3(spread, tmp_path):
  """An export of format 3 (before the row-by-row checks) computes format 2's checks: what it
  writes is a format 2 file, which a model directory decodes; a format 3 file is refused in one
  line that asks for a new export."""
  module = export.build_codec_functions(spread.model, spread.cfg)

  @tf.function(input_signature=module.compress.input_signature)
  def old_compress(image):
    with spread.model.format2_checks():
      strings, _, checks = spread.model.compress_padded(pad_to_multiple(image, tf.uint8), False)
    return {"strings": strings, "checks": checks}

  module.compress = old_compress
  module.format_version.assign(3)
  old = Codec(module, "format 3")
  assert old.check_format == 2
  written = old.encode(spread.image)
  assert written.version == 2 and written.strings == spread.stream.strings
  np.testing.assert_array_equal(spread.codec.decode(written), spread.codec.decode(spread.stream))
  with pytest.raises(CodecError, match=r"this export \(format 3\) .*export the model again"):
    old.decode(spread.stream)

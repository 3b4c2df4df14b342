"""The entropy-model contract (``EntropyModel``) and the conditional Gaussian that codes y.

An entropy model codes the latent y given the decoded hyperprior z_hat; the shared parts (g_a,
g_s, h_a, the prior on z) are ``cbexp.models.compression``'s. Adding one takes a module in
``cbexp/entropy/`` and a ``conf/entropy/<name>.yaml`` naming its class: the benchmark, the MAC
counts and the conformance matrix read everything else from the ``EntropyModel`` interface.
"""

import contextlib
import dataclasses
import inspect
import math

import numpy as np
import tensorflow as tf
import tensorflow_compression as tfc
from tensorflow_compression.python.ops import gen_ops

from cbexp.models import tiling
from cbexp.models.transforms.layers import HyperSynthesisTransform, transform_reach

STRINGS_MISMATCH = "range-coded strings do not match their decoded symbols"
# Bits a string may hold beyond 8 * its length: what tfc's encoder leaves out at the end (the
# final state's trailing zero bytes, which the decoder supplies). A few bytes in practice.
TRAILING_ZEROS_BITS = 128
# tfc's range coder keeps its interval size at or above 2**16 before each symbol (range_coder.cc).
MIN_RANGE_BITS = 16
# Relative margin for rounding in the float64 cost sums: each term's logarithm is within a few
# ulps and a sum of n positive terms within n ulps of the total, so below 2**-20 of it for any
# n < 2**30 symbols per string.
COST_ROUNDING = 2.0**-20
NOT_BUILT = (
  "are not built: call model.build_coders() after training or restoring weights, "
  "before compress/decompress"
)


def require_built(value, what="range-coding tables"):
  """``value`` (a coder, tables, networks built by ``build_coders``), or the error that says how
  to build it when it is None."""
  if value is None:
    raise RuntimeError(f"{what} {NOT_BUILT}")
  return value


def scale_table_fn(num_scales, scale_min, scale_max):
  """The scale of scale index i: log-spaced from scale_min (i = 0) to scale_max (num_scales - 1)."""
  offset = tf.math.log(float(scale_min))
  factor = (tf.math.log(float(scale_max)) - offset) / (int(num_scales) - 1)
  return lambda i: tf.math.exp(offset + factor * i)


def round_scale_indexes(scale_indexes, num_scales):
  """The integer scale indexes the range coder uses: rounded (tfc itself would truncate towards
  zero) and clipped to the table."""
  return tf.clip_by_value(tf.round(scale_indexes), 0.0, num_scales - 1.0)


@dataclasses.dataclass
class CoderTables:
  """A tfc coder's CDF table parsed like tfc's range coder (``range_coder_kernels.cc``, ScanCDF):
  row r is ``cdf[r, :lengths[r]]``, 0 ... 2**precision, the last interval being the escape
  symbol (values outside the table: Elias gamma code and a sign bit after it); it starts at
  ``starts[r]`` in the coder's flat ``cdf`` variable."""

  precision: int
  cdf: np.ndarray  # [rows, max length] int64, zero-padded
  lengths: np.ndarray  # [rows]
  offsets: np.ndarray  # [rows]: the value of symbol 0
  starts: np.ndarray  # [rows]


def coder_tables(coder):
  """-> CoderTables of a tfc coder built with ``compression=True``."""
  flat = coder.cdf.numpy()
  rows, starts, start = [], [], 0
  while start < len(flat):
    precision = abs(int(flat[start]))
    end = start + 1 + int(np.argmax(flat[start + 1 :] == 1 << precision))  # first 2**p
    rows.append((precision, flat[start + 1 : end + 1]))
    starts.append(start + 1)
    start = end + 1
    while start < len(flat) and flat[start] == 1 << precision:  # trailing padding
      start += 1
  if len({p for p, _ in rows}) != 1:
    raise RuntimeError(f"unexpected range-coding table layout ({len(rows)} rows)")
  lengths = np.array([len(c) for _, c in rows])
  cdf = np.zeros([len(rows), lengths.max()], np.int64)
  for r, (_, c) in enumerate(rows):
    cdf[r, : len(c)] = c
  return CoderTables(rows[0][0], cdf, lengths, coder.cdf_offset.numpy(), np.array(starts))


def gamma_bits(gamma):
  """Bits of tfc's overflow code for an escaped value (Elias gamma of ``gamma`` >= 1 and a sign
  bit): 2 * (floor(log2 gamma) + 1), exactly (the exponent field of gamma as a float64)."""
  gamma = tf.cast(tf.maximum(gamma, 1), tf.float64)
  exponent = tf.bitwise.right_shift(tf.bitcast(gamma, tf.int64), 52) - 1023
  return 2.0 * tf.cast(exponent + 1, tf.float64)


class CodingCost:
  """A lower bound of the bits tfc's range coder writes for symbols, from its own quantized
  tables: ``cost(symbols, rows)`` -> float64 bits per batch element, ``symbols`` being the
  coder's (value - offsets[row]; escaped ones outside [0, escape)).

  Why a bound and not the information content: tfc narrows an interval of size s (s >= 2**16)
  for a symbol of mass m at precision p to floor(s*v/2**p) - floor(s*u/2**p) <= s*m/2**p + 1,
  so the interval shrinks by at least the factor (m + 2**(p-16)) / 2**p: each symbol writes at
  least p - log2(m + 2**(p-16)) bits, a little under -log2(m/2**p). Summed over a long,
  high-rate string the difference reaches tens of bits, so the information content itself
  would refuse correct strings. The escape code's bits are coded at precision 1 (mass 1).
  A plain object: it reads the coder's own ``cdf`` variable and keeps two small constants (where
  each row starts, where its escape symbol is), so it adds no checkpoint dependency."""

  def __init__(self, coder):
    tables = coder_tables(coder)
    self._cdf = coder.cdf
    self._precision = float(tables.precision)
    self._starts = tf.constant(tables.starts, tf.int32)
    self._escape = tf.constant(tables.lengths - 2, tf.int32)
    self.offsets = coder.cdf_offset

  def __call__(self, symbols, rows):
    symbols = tf.convert_to_tensor(symbols, tf.int32)
    rows = tf.broadcast_to(tf.convert_to_tensor(rows, tf.int32), tf.shape(symbols))
    escape = tf.gather(self._escape, rows)
    overflow = (symbols < 0) | (symbols >= escape)
    at = tf.gather(self._starts, rows) + tf.where(overflow, escape, symbols)
    mass = tf.cast(tf.gather(self._cdf, at + 1) - tf.gather(self._cdf, at), tf.float64)
    slack = 2.0 ** (self._precision - MIN_RANGE_BITS)
    log2 = lambda x: tf.math.log(x) / tf.math.log(tf.constant(2.0, tf.float64))
    bits = self._precision - log2(mass + slack)
    gamma = tf.where(symbols < 0, -symbols, symbols - escape + 1)
    per_escape_bit = 1.0 - math.log2(1.0 + 2.0 ** (1 - MIN_RANGE_BITS))  # precision 1, mass 1
    bits += tf.where(overflow, gamma_bits(gamma) * per_escape_bit, tf.zeros_like(bits))
    return tf.reduce_sum(tf.reshape(bits, [tf.shape(bits)[0], -1]), axis=-1)


def verify_strings(decoded, strings, recoded, bits, finalized=None):
  """``decoded`` once the strings are verified: ``recoded`` (the encoder's strings for the
  decoded symbols) must equal ``strings``, the symbols' cost under the coder's tables
  (``bits``, float64, the lower bound of a CodingCost, less its rounding margin) must fit in
  the strings (8 bits a byte + TRAILING_ZEROS_BITS), and the decoder's own sanity check
  ``finalized``, if given, must hold.

  tfc's range decoder reads implicit zeros past the end of a string and its finalize check is
  weak: empty, truncated, zero-padded or random strings, or a header claiming a larger image,
  often decode without an error, to a wrong image. The encoder is deterministic, so a string it
  wrote is exactly what coding its decoded symbols again gives, and holds their cost; anything
  else fails here (tf.errors.InvalidArgumentError naming STRINGS_MISMATCH; cbexp.codec turns it
  into one line). Costs one range encoding and a table look-up per symbol."""
  capacity = 8.0 * tf.cast(tf.strings.length(strings), tf.float64) + TRAILING_ZEROS_BITS
  bits = tf.cast(bits, tf.float64) * (1.0 - COST_ROUNDING)
  checks = [
    tf.debugging.assert_equal(recoded, strings, message=STRINGS_MISMATCH, summarize=0),
    tf.debugging.assert_less_equal(bits, capacity, message=STRINGS_MISMATCH, summarize=0),
  ]
  if finalized is not None:
    checks.append(tf.debugging.assert_equal(finalized, True, message=STRINGS_MISMATCH, summarize=0))
  with tf.control_dependencies(checks):
    return tf.identity(decoded)


# Bytes of the symbol check of one string (GaussianConditional.symbol_check, cbexp.codec.bitstream).
SYMBOL_CHECK_BYTES = 4


def row_fingerprints(*parts):
  """uint8 [batch * rows, 8]: tf.fingerprint of each row of ``parts`` (integer-valued tensors
  [batch, rows, ...] with the same batch and rows), its values in every part as int32, in
  order."""
  lead = tf.shape(parts[0])[:2]
  count = lead[0] * lead[1]
  flat = [tf.reshape(tf.cast(p, tf.int32), tf.stack([count, -1])) for p in parts]
  return tf.fingerprint(tf.concat(flat, axis=1))


def fold_row_fingerprints(rows):
  """uint8 [batch, rows * 8] (each batch element's row fingerprints, in order) -> the symbol
  check, uint8 [batch, SYMBOL_CHECK_BYTES]."""
  return tf.fingerprint(rows)[:, :SYMBOL_CHECK_BYTES]


class _CheckLog:
  """The symbol checks of one coding trace (a plain object: no checkpoint dependency)."""

  def __init__(self):
    self.checks = []


@dataclasses.dataclass
class CodingRecord:
  """What the range coder coded for one string (tensors of the graph that coded it)."""

  indexes: tf.Tensor  # the coded table index of every symbol (the rounded scale index)
  symbols: tf.Tensor  # the coded integers, relative to the mean: round(y - mean)
  means: tf.Tensor  # the mean each symbol was coded with
  teacher: tf.Tensor  # what a teacher-forced decoder reconstructs this string from

  def tensors(self):
    """(indexes, symbols, means, teacher): e.g. a tf.function's outputs."""
    return self.indexes, self.symbols, self.means, self.teacher


class CodingRecorder:
  """Records what an entropy model's range coder codes, string by string, and may steer its
  decoder; ``EntropyModel.recording`` installs it (cbexp.evaluation.conformance uses it).

  The coding steps call ``record`` once per string, in string order, while they run or are
  traced (the records are then tensors of that graph). ``index_offset`` is added to the
  decoder's scale indexes (a deliberately broken decoder). ``teacher``: one tensor per string
  (the encoder's ``CodingRecord.teacher``); the decoder then reconstructs each string from it
  instead of range decoding, with its own entropy parameters, so that one index computed
  otherwise cannot desynchronise the rest. A plain object: no checkpoint dependency."""

  def __init__(self, index_offset=0.0, teacher=None):
    self.index_offset = float(index_offset)
    self.teacher = None if teacher is None else list(teacher)
    self.records = []

  def record(self, indexes, symbols, means, teacher=None):
    """``teacher``: what the decoder needs instead of the string (default: the symbols)."""
    self.records.append(
      CodingRecord(indexes, symbols, means, symbols if teacher is None else teacher)
    )

  def next_teacher(self):
    """The teacher of the string about to be decoded, None without teacher forcing."""
    return None if self.teacher is None else self.teacher[len(self.records)]


@dataclasses.dataclass
class LatentOutput:
  y_hat: tf.Tensor  # reconstruction fed to the synthesis (straight-through rounding, LRP added)
  bits: tf.Tensor  # rate of y in bits, one value per image


class GaussianConditional(tf.Module):
  """Quantized Gaussian with a mean and a scale *index* into a fixed log-spaced scale table.

  Wraps tfc.LocationScaleIndexedEntropyModel. Training uses the indexes continuously; range
  coding needs integer indexes: we round them (``coded_indexes``), and the estimated rate of
  ``rate(..., training=False)`` uses the same rounded indexes so that estimate and string
  length are about the same thing. Every string coded through ``compress``/``decompress``
  reports its symbol check (``record_check``) and, while a ``CodingRecorder`` is installed
  (``recorder``), what it coded.
  """

  def __init__(self, num_scales=64, scale_min=0.11, scale_max=256.0):
    super().__init__(name="gaussian_conditional")
    self.num_scales = int(num_scales)
    self._scale_fn = scale_table_fn(self.num_scales, scale_min, scale_max)
    self._training_model = self._make(compression=False)
    self._coding_model = None
    self.recorder = None

  def _make(self, compression):
    return tfc.LocationScaleIndexedEntropyModel(
      tfc.NoisyNormal,
      num_scales=self.num_scales,
      scale_fn=self._scale_fn,
      coding_rank=3,
      compression=compression,
    )

  def build_coder(self):
    """Builds the range-coding tables (they depend only on the fixed scale table)."""
    if self._coding_model is None:
      self._coding_model = self._make(compression=True)
      self._cost = CodingCost(self._coding_model)

  @property
  def coder(self):
    return require_built(self._coding_model)

  def coded_indexes(self, scale_indexes):
    """The integer indexes the range coder uses (rounded, clipped to the table)."""
    return round_scale_indexes(scale_indexes, self.num_scales)

  def rate(self, y, scale_indexes, loc, training):
    """Bits per image: noisy-y upper bound when training, information content otherwise."""
    if not training:
      scale_indexes = self.coded_indexes(scale_indexes)
    _, bits = self._training_model(y, scale_indexes, loc=loc, training=training)
    return bits

  def quantize(self, y, loc):
    """round(y - loc) + loc with a straight-through gradient: what the decoder reconstructs."""
    return self._training_model.quantize(y, loc=loc)

  def compress(self, y, scale_indexes, loc):
    """The string of y; records its symbol check and, if recording, what it codes."""
    indexes = self.coded_indexes(scale_indexes)
    symbols = tf.round(y - loc)  # the symbols tfc codes
    self.record_check(symbols)
    if self.recorder is not None:
      self.recorder.record(indexes, symbols, loc)
    return self.coder.compress(y, indexes, loc=loc)

  def decompress(self, strings, scale_indexes, loc):
    """The decoded values; the strings are verified (``verify_strings``) and their symbol check
    recorded (``record_check``). While a ``CodingRecorder`` is installed, its index offset and
    teacher apply and what was decoded is recorded."""
    recorder = self.recorder
    if recorder is not None:
      scale_indexes = scale_indexes + recorder.index_offset
      teacher = recorder.next_teacher()
      if teacher is not None:  # the encoder's symbols, with this decoder's means
        values = teacher + loc
        recorder.record(self.coded_indexes(scale_indexes), tf.round(values - loc), loc)
        return values
    indexes = self.coded_indexes(scale_indexes)
    values = self.coder.decompress(strings, indexes, loc=loc)
    rows = tf.cast(indexes, tf.int32)
    decoded = tf.round(values - loc)  # the decoded symbols, as compress computed them
    symbols = tf.cast(decoded, tf.int32) - tf.gather(self._cost.offsets, rows)
    values = verify_strings(
      values, strings, self.coder.compress(values, indexes, loc=loc), self._cost(symbols, rows)
    )
    self.record_check(decoded)
    if recorder is not None:
      recorder.record(indexes, decoded, loc)
    return values

  # --- the symbol check of each string (.cbx formats 2 and 3, cbexp.codec.bitstream) ---------
  #: The .cbx format whose symbol checks ``record_check`` computes: 3 (row by row, what a
  #: streamed coder computes band by band) or 2 (the whole string at once, files written before
  #: format 3; only the whole-latent coder computes it). Set while a coding graph is traced.
  check_format = 3

  @staticmethod
  def symbol_check(*parts):
    """uint8 [batch, SYMBOL_CHECK_BYTES], the .cbx format 3 symbol check of ``parts``
    (integer-valued tensors [batch, rows, ...], e.g. coded scale indexes and symbols): the first
    bytes of tf.fingerprint (farmhash64) of the fingerprints of its rows (``row_fingerprints``),
    in order. Row by row so that a coder working on bands of rows (``cbexp.models.streaming``)
    computes it as the whole-latent one does, without holding every symbol. Encoder and decoder
    compute it with the same ops from what they coded, so equal checks mean the decoder used the
    encoder's indexes and got back its symbols."""
    batch = tf.shape(parts[0])[:1]
    rows = row_fingerprints(*parts)  # [batch * rows, 8]
    return fold_row_fingerprints(tf.reshape(rows, tf.concat([batch, [-1]], 0)))

  @staticmethod
  def symbol_check_format2(*parts):
    """The .cbx format 2 check: the first bytes of tf.fingerprint of ``parts`` flattened and
    concatenated per batch element (the whole string's symbols at once)."""
    batch = tf.shape(parts[0])[:1]
    flat = [tf.reshape(tf.cast(p, tf.int32), tf.concat([batch, [-1]], 0)) for p in parts]
    return tf.fingerprint(tf.concat(flat, axis=1))[:, :SYMBOL_CHECK_BYTES]

  def check_of(self, *parts):
    """The symbol check of ``parts`` in ``check_format``."""
    if self.check_format == 2:
      return self.symbol_check_format2(*parts)
    return self.symbol_check(*parts)

  # --- coding band by band (cbexp.models.streaming) --------------------------------------------
  # The same symbols, strings and checks as ``compress``/``decompress`` on the whole latent: tfc's
  # range coder codes a tensor in row-major order, so bands of rows coded one after the other on
  # one open handle write the whole latent's string. Batch 1 (the codec's).
  def _coded(self, values, indexes, loc):
    """-> (table rows: int32, the coder's symbols: value - loc rounded, less the row's offset,
    the rounded values relative to loc)."""
    rows = tf.cast(indexes, tf.int32)
    relative = tf.round(values - loc)
    return rows, tf.cast(relative, tf.int32) - tf.gather(self._cost.offsets, rows), relative

  def encoder_state(self):
    """The state of a streamed encoder (a tfc range-encoder handle, the row fingerprints)."""
    handle = gen_ops.create_range_encoder([1], self.coder.cdf)
    return handle, tf.zeros([0, 8], tf.uint8)

  def encode_band(self, state, y, scale_indexes, loc):
    """Codes a band of y -> (state, its reconstruction round(y - loc) + loc)."""
    handle, fingerprints = state
    indexes = self.coded_indexes(scale_indexes)
    rows, symbols, relative = self._coded(y, indexes, loc)
    handle = gen_ops.entropy_encode_index(handle, rows, symbols)
    fingerprints = tf.concat([fingerprints, row_fingerprints(relative)], axis=0)
    return (handle, fingerprints), relative + loc

  def finish_encoder(self, state):
    """-> (the string: string [1], its symbol check: uint8 [1, SYMBOL_CHECK_BYTES])."""
    handle, fingerprints = state
    return gen_ops.entropy_encode_finalize(handle), self._fold(fingerprints)

  def decoder_state(self, strings):
    """The state of a streamed decoder of ``strings`` (string [1]): the decoder's handle, an
    encoder's that codes the decoded symbols again (``verify_strings``), their cost, the row
    fingerprints."""
    return (
      gen_ops.create_range_decoder(strings, self.coder.cdf),
      gen_ops.create_range_encoder([1], self.coder.cdf),
      tf.zeros([1], tf.float64),
      tf.zeros([0, 8], tf.uint8),
    )

  def decode_band(self, state, scale_indexes, loc):
    """Decodes the next band -> (state, its values)."""
    decoder, recoder, bits, fingerprints = state
    indexes = self.coded_indexes(scale_indexes)
    rows = tf.cast(indexes, tf.int32)
    decoder, symbols = gen_ops.entropy_decode_index(decoder, rows, tf.shape(rows)[1:], tf.int32)
    values = tf.cast(symbols + tf.gather(self._cost.offsets, rows), tf.float32) + loc
    rows, symbols, relative = self._coded(values, indexes, loc)
    recoder = gen_ops.entropy_encode_index(recoder, rows, symbols)
    bits += self._cost(symbols, rows)
    fingerprints = tf.concat([fingerprints, row_fingerprints(relative)], axis=0)
    return (decoder, recoder, bits, fingerprints), values

  def finish_decoder(self, state, strings):
    """-> the symbol check of the decoded string, once ``verify_strings`` passed (a graph that
    outputs it, or anything computed under ``tf.control_dependencies`` on it, fails on strings
    that do not verify)."""
    decoder, recoder, bits, fingerprints = state
    return verify_strings(
      self._fold(fingerprints),
      strings,
      gen_ops.entropy_encode_finalize(recoder),
      bits,
      finalized=gen_ops.entropy_decode_finalize(decoder),
    )

  @staticmethod
  def _fold(fingerprints):
    return fold_row_fingerprints(tf.reshape(fingerprints, [1, -1]))

  def start_checks(self):
    """Starts collecting the check of every string coded from now on (one trace of
    ``CompressionModel``'s coding functions); ``finish_checks`` returns them in coding order."""
    self._check_log = _CheckLog()

  def record_check(self, *parts):
    """Records ``check_of(*parts)`` of the string just coded, if collecting. Entropy models
    that code without ``compress``/``decompress`` (the autoregressive one) call it themselves,
    once per string, in string order."""
    log = getattr(self, "_check_log", None)
    if log is not None:
      log.checks.append(self.check_of(*parts))

  def finish_checks(self):
    """-> the checks recorded since ``start_checks`` (a list of uint8 [batch, 4]); stops."""
    log, self._check_log = getattr(self, "_check_log", None), None
    return [] if log is None else log.checks

  # --- diagnostics: the range coder's own model ------------------------------------------------
  def _coder_rows(self):
    """(precision, cdf, lengths, offsets) of ``coder_tables`` (cached): row r is the quantized
    CDF of scale index r."""
    if getattr(self, "_rows", None) is None:
      tables = coder_tables(self.coder)
      if len(tables.lengths) != self.num_scales:
        raise RuntimeError(f"unexpected range-coding table layout ({len(tables.lengths)} rows)")
      self._rows = (tables.precision, tables.cdf, tables.lengths, tables.offsets)
    return self._rows

  def symbol_bits(self, y, scale_indexes, loc):
    """Per-element costs of coding y, as numpy arrays of y's shape, for diagnosing gaps between
    the Gaussian estimate and the real strings:

    * ``table``: bits under the range coder's own model, i.e. its quantized CDF tables
      (``range_coder_precision`` bits, so no in-table symbol costs more than that) plus, for a
      symbol outside its table, the escape symbol and tfc's overflow code (``gamma_bits`` of
      the excess, at 1 bit each).
    * ``gaussian``: the information content under the continuous Gaussian, what
      ``rate(..., training=False)`` sums (unbounded for outliers of a small scale).
    * ``overflow``: whether the symbol went through the escape code.
    * ``table_probability``: the probability the coder's table gives the symbol (escape
      symbol's for overflows).
    The symbols are tfc's: round(y - loc) minus the table offset of the coded index.
    """
    precision, cdf, lengths, offsets = self._coder_rows()
    index = tf.cast(self.coded_indexes(scale_indexes), tf.int32).numpy()
    value = tf.round(tf.convert_to_tensor(y - loc, tf.float32)).numpy()
    symbol = value.astype(np.int64) - offsets[index]
    escape = lengths[index] - 2  # symbols 0 .. escape - 1 are in the table
    overflow = (symbol < 0) | (symbol >= escape)
    coded = np.where(overflow, escape, symbol)
    rows = cdf[index]
    mass = (
      np.take_along_axis(rows, (coded + 1)[..., None], -1)[..., 0]
      - np.take_along_axis(rows, coded[..., None], -1)[..., 0]
    )
    gamma = np.where(symbol < 0, -symbol, symbol - escape + 1)
    table = precision - np.log2(mass) + np.where(overflow, gamma_bits(gamma).numpy(), 0.0)
    scale = self._scale_fn(tf.cast(index, tf.float32))
    gaussian = -tfc.NoisyNormal(loc=0.0, scale=scale).log_prob(value).numpy() / np.log(2.0)
    return {
      "table": table,
      "gaussian": gaussian,
      "overflow": overflow,
      "table_probability": mass / 2.0**precision,
    }

  def table_bits(self, y, scale_indexes, loc):
    """Bits per image of y under the range coder's own model (its quantized tables and escape
    code, see ``symbol_bits``): what the real strings cost up to the coder's few bytes of
    termination. For diagnosing gaps between the Gaussian estimate and the real strings."""
    return self.symbol_bits(y, scale_indexes, loc)["table"].reshape([np.shape(y)[0], -1]).sum(-1)


#: The stages ``EntropyModel.decode_stages`` names its work by (cbexp.evaluation.bench times
#: each): range decoding, the hyper-synthesis, the entropy parameters (context models included),
#: a serial loop in which those alternate inside one graph and cannot be timed apart, and the
#: latent residual prediction.
DECODE_STAGES = ("range_coding", "hyper_synthesis", "entropy_parameters", "serial_loop", "lrp")
#: The stages ``EntropyModel.decode_macs`` counts (cbexp.evaluation.complexity).
MAC_STAGES = ("hyper_synthesis", "context", "entropy_parameters", "lrp")


def call_stage(name, fn, *args):
  """The ``stage`` of a plain decode (``EntropyModel.decompress``): fn(*args)."""
  del name
  return fn(*args)


class EntropyModel(tf.keras.layers.Layer):
  """Codes y given z_hat. Subclasses implement, in the style of CompressAI's latent codecs:

  * ``call(y, z_hat, training)`` -> ``LatentOutput``: the training forward pass. ``bits`` is
    the rate of the noisy latents when ``training`` is true, the information content of the
    quantized latents otherwise (the *estimated* rate, to compare with the real strings).
  * ``compress(y, z_hat)`` -> ``(strings, y_hat)``: real range-coded strings (``num_strings``
    of them, each of shape ``[batch]``) plus the reconstruction the decoder will produce.
  * ``decode_stages(strings, z_hat, y_shape, stage)`` -> ``y_hat``, bit-identical to the
    encoder's: the decoder, each piece of its work run as ``stage(name, fn, *args)``.
    ``decompress`` is this with ``call_stage``. Every string is verified
    (``verify_strings``), so corrupt, crafted, truncated or padded strings, and strings of
    another model or numeric environment, are refused instead of decoding to a wrong image.
  * ``decode_macs(latent_hw, z_hw)``: the decoder's multiply-accumulates per stage.
  * ``parameter_groups()``: {component: layers}, for the parameter breakdown.

  Coding through ``self.gaussian`` (``GaussianConditional.compress``/``decompress``, once per
  string, in string order) gives the symbol checks of .cbx files and the conformance records
  (``recording``) for free; a model that codes otherwise calls ``gaussian.record_check`` and
  the installed ``gaussian.recorder`` itself.
  """

  #: number of strings ``compress`` returns for y (the z string is the model's, not counted here)
  num_strings = 1

  def __init__(self, latent_depth, scale_table, numerics="float", name=None, **kwargs):
    super().__init__(name=name, **kwargs)
    from cbexp.entropy.exact import check_numerics

    self.latent_depth = int(latent_depth)
    self.gaussian = GaussianConditional(**scale_table)
    # "float": compress/decompress use the layers themselves. "exact": integer versions of every
    # network that decides a coded symbol, built from the trained weights by build_coders
    # (cbexp.entropy.exact); training and the estimated rate stay float either way.
    self.numerics = check_numerics(numerics)
    self._exact_networks = None
    # Latent positions per band of the coding networks (``banded``); 0: the whole latent at once.
    self.band_positions = 0
    self.memory_budget_bytes = 0  # what the bands and a stream's buffers share (stream_pace)

  def build_coders(self):
    self.gaussian.build_coder()
    if self.numerics == "exact":
      from cbexp.entropy.exact import exact_networks

      self._exact_networks = exact_networks(self)  # a snapshot of the current weights

  def coding_networks(self):
    """The networks compress/decompress compute the entropy parameters with: the model itself
    (float numerics) or its integer snapshot (exact numerics, ``cbexp.entropy.exact``), which
    has the same attribute names."""
    if self.numerics == "float":
      return self
    return require_built(self._exact_networks, "exact networks")

  # --- the coding networks over row bands (cbexp.models.tiling.row_bands) --------------------
  def widest_layer_values(self):
    """The largest input + output channels of one of the model's kernels: the values per latent
    position that a band's activations are sized by (``set_memory_budget``)."""
    kernels = [w for w in self.weights if "kernel" in w.name and w.shape.rank in (2, 4)]
    return max(int(k.shape[-2]) + int(k.shape[-1]) for k in kernels)

  def set_memory_budget(self, budget_bytes):
    """Runs the networks of compress and decompress over row bands whose activations fit
    ``budget_bytes`` (0: the whole latent at once), and the hyper-synthesis over tiles whose
    activations do (``tiling.tile_for_budget``, as the transforms: its transposed convolutions'
    temporaries are several times its output). Float numerics only: the exact networks
    requantize each layer by its peak over the whole latent (``cbexp.entropy.exact``), so they
    keep the whole latent. The strings do not change (tests/models/test_tiling.py)."""
    self._hyper_tiles = {}
    if not budget_bytes or self.numerics != "float":
      self.band_positions = self.memory_budget_bytes = 0
      return
    self.memory_budget_bytes = budget_bytes
    self.band_positions = tiling.band_positions_for_budget(budget_bytes, self.widest_layer_values())
    for path in self._submodules_of(HyperSynthesisTransform):
      z_depth = int(path.layers[0].kernel.shape[-2])
      per_z = tiling.activation_bytes_per_latent(path, z_depth)
      self._hyper_tiles[path.name] = tiling.tile_for_budget(budget_bytes, per_z, 4.0, 4)

  def _submodules_of(self, kind):
    return [m for m in self._flatten_layers(include_self=False) if isinstance(m, kind)]

  def banded(self, fn, inputs, halo, out_channels):
    """``fn(*inputs)`` (a tuple of tensors with ``out_channels`` channels each) over row bands
    of ``band_positions`` latent positions with ``halo`` rows of context: the coding paths call
    it for every network that runs on the whole latent; training does not (its ``call``)."""
    if not self.band_positions:
      return tuple(fn(*inputs))
    return tiling.row_bands(fn, list(inputs), self.band_positions, halo, out_channels)

  def hyper_synthesis_tiled(self, path, z_hat):
    """A hyper-synthesis ``path`` of the coding paths on ``z_hat``: over tiles of z
    (``tiling.tiled``) sized by the memory budget (``set_memory_budget``), when banded."""
    tile = getattr(self, "_hyper_tiles", {}).get(path.name)
    if not self.band_positions or not tile:
      return path(z_hat)
    _, scale = transform_reach(path)
    return tiling.tiled(
      path,
      z_hat,
      tile,
      tiling.halo_latents(path),
      1,
      int(1 / scale),
      int(path.layers[-1].filters),
      tf.float32,
    )

  # --- streamed coding (cbexp.models.streaming) -----------------------------------------------
  #: Latent rows per stream row of the model's ``encoding_stream``/``decoding_stream``; 0: the
  #: model codes the whole latent only (its networks may still run over row bands).
  stream_unit = 0

  def streams(self):
    """Whether compress and decompress run as a stream (band by band, bounded memory): banded,
    a model with streams, no ``CodingRecorder`` installed (conformance records whole tensors),
    format 3 checks."""
    return bool(
      self.stream_unit
      and self.band_positions
      and self.gaussian.recorder is None
      and self.gaussian.check_format == 3
    )

  def stream_min_rows(self, width):
    """The fewest rows of a network call in a stream whose rows hold ``width`` latent positions
    of each network's input (``tiling.MIN_BAND_POSITIONS``)."""
    return -(-tiling.MIN_BAND_POSITIONS // width)

  def stream_pace(self, width, stages):
    """Rows per band of a stream of ``stages`` whose rows hold ``width`` latent positions of each
    network's input, at least ``stream_min_rows``. The budget pays for a call's activations
    (``band_positions``), of up to two bands (``streaming.run``), and for what the stream keeps
    between calls: every output for the lag plus two bands, twice (a buffer, and the one that
    joins the next band to it)."""
    from cbexp.models import streaming

    budget = tf.cast(self.memory_budget_bytes, tf.float64)
    kept = tf.cast(streaming.kept_bytes_per_row(stages), tf.float64)
    call = budget / self.band_positions * tf.cast(width, tf.float64)
    rows = (budget - 2 * streaming.lag(stages) * kept) / (2 * call + 4 * kept)
    return tf.maximum(self.stream_min_rows(width), tf.cast(tf.maximum(rows, 0.0), tf.int32))

  def hyper_rows(self, path, z_hat, r0, r1):
    """Latent rows [r0, r1) of a hyper-synthesis ``path`` of ``z_hat``, computed from the z rows
    they depend on (``tiling.halo_latents``: its receptive field in z samples), by tiles
    (``hyper_synthesis_tiled``)."""
    _, scale = transform_reach(path)
    up, halo = int(1 / scale), tiling.halo_latents(path)
    z0 = tf.maximum(r0 // up - halo, 0)
    z1 = tf.minimum((r1 + up - 1) // up + halo, tf.shape(z_hat)[1])
    return self.hyper_synthesis_tiled(path, z_hat[:, z0:z1])[:, r0 - up * z0 : r1 - up * z0]

  def encoding_stream(self, latent, z_hat):
    """compress as a ``cbexp.models.streaming.Plan`` (models with ``stream_unit``), y's rows
    given by ``latent`` (a ``streaming.Latent``) as the stream asks for them."""
    raise NotImplementedError

  def decoding_stream(self, strings, z_hat, y_shape):
    """decompress as a ``cbexp.models.streaming.Plan`` (models with ``stream_unit``)."""
    raise NotImplementedError

  #: True when the model's LRP output feeds no entropy parameter, only the synthesis (models
  #: whose LRP sees the hyper features and at most the decoded y_hat): the decoder may then run
  #: it in reduced precision without changing a decoded symbol. False for the ChARM-style models,
  #: where each slice's LRP output conditions the later slices.
  lrp_outside_entropy_loop = False

  def set_decode_precision(self, precision):
    """Decoder-side precision of the LRP (``self.lrp``) when ``lrp_outside_entropy_loop``;
    ``CompressionModel.set_decode_precision`` calls it. float32 is the layer itself."""
    from cbexp.models.precision import MaterializedTransform, check_precision

    reduced = check_precision(precision) != "float32" and self.lrp_outside_entropy_loop
    # A plain object (kernels snapshot): no checkpoint dependency. Rebuilt by build_coders.
    self._decoding_lrp = MaterializedTransform(self.lrp, precision) if reduced else None

  def decoding_lrp(self):
    """The LRP the decoder uses: ``self.lrp`` or its reduced-precision snapshot."""
    return getattr(self, "_decoding_lrp", None) or self.lrp

  def _residual(self, lrp_input, decoding=False):
    """0.5 * tanh(lrp(lrp_input)) for the models with one LRP (``decoding``: the decoder's)."""
    lrp = self.decoding_lrp() if decoding else self.lrp
    return 0.5 * tf.math.tanh(lrp(lrp_input))

  @contextlib.contextmanager
  def recording(self, recorder):
    """Installs ``recorder`` (a ``CodingRecorder``) for the coding traced or run inside."""
    saved, self.gaussian.recorder = self.gaussian.recorder, recorder
    try:
      yield recorder
    finally:
      self.gaussian.recorder = saved

  def parameter_groups(self):
    """{component name: list of layers}; used by ``cbexp.evaluation.size`` for the breakdown.
    Names starting with ``hyper_synthesis`` count as hyper transforms."""
    raise NotImplementedError

  def call(self, y, z_hat, training):
    raise NotImplementedError

  def compress(self, y, z_hat):
    raise NotImplementedError

  def decompress(self, strings, z_hat, y_shape):
    return self.decode_stages(strings, z_hat, y_shape, call_stage)

  def decode_stages(self, strings, z_hat, y_shape, stage):
    """The decoder (-> y_hat), each piece of its work run as ``stage(name, fn, *args)``, which
    returns ``fn(*args)``; ``name`` is one of DECODE_STAGES. cbexp.evaluation.bench runs each
    call as a tf.function of its own, timed, and keys them by call order: calls must come in
    the same order on every decode, and ``fn`` may capture layers and Python values but takes
    every tensor it reads from ``args`` (``strings`` holds one [batch] tensor per string)."""
    raise NotImplementedError

  def decode_macs(self, latent_hw, z_hw):
    """{stage: multiply-accumulates} of the decoder on a latent grid ``latent_hw`` (z grid
    ``z_hw``), stages among MAC_STAGES (absent ones count 0). The encoder does the same work.
    Counted as the implementation computes (cbexp.evaluation.complexity)."""
    raise NotImplementedError


class SharedConstructor:
  """Mixin (before ``EntropyModel`` in the bases): the constructor of cbexp's own entropy models.

  ``cbexp.config.build_model`` gives each the transform's ``latent_depth`` and
  ``hyper_synthesis_filters`` and the ``scale_table``; ``hidden_filters`` (the widths of its
  slice transforms, the LRP's included), ``numerics`` and ``name`` (``default_name`` unless
  given) are options of them all. A model's own options are the keyword arguments, with their
  defaults, of the methods named in ``option_methods``: ``_make_layers`` creates the model's
  layers, in the order of their weights (``model.variables``, which the codec's fingerprint
  hashes in that order).

  ``inspect.signature(cls)`` lists the shared arguments and the model's options as one
  constructor's: Hydra passes the options as keywords, and ``cbexp.config.entropy_defaults``
  reads their defaults there (a key that a saved config lacks means its default). Not an
  ``EntropyModel`` itself, so that it is no entropy class a config may name.
  """

  default_name = None
  option_methods = ("_make_layers",)

  def __init__(
    self,
    latent_depth,
    hyper_synthesis_filters,
    scale_table,
    *,
    hidden_filters=(224, 128),
    numerics="float",
    name=None,
    **options,
  ):
    name = self.default_name if name is None else name
    super().__init__(latent_depth, scale_table, numerics=numerics, name=name)
    self._make_layers(hyper_synthesis_filters, scale_table, hidden_filters, **options)

  def _make_layers(self, hyper_synthesis_filters, scale_table, hidden_filters):
    """Creates the model's layers; its keyword arguments with a default are the model's options."""
    raise NotImplementedError

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    cls.__signature__ = _constructor_signature(cls)


def _constructor_signature(cls):
  """``SharedConstructor.__init__``'s arguments, without ``self``, with the options of
  ``cls.option_methods`` (those with a default, keyword-only) before ``numerics`` and ``name``,
  whose default becomes ``cls.default_name``."""
  shared = dict(inspect.signature(SharedConstructor.__init__).parameters)
  del shared["self"], shared["options"]
  numerics, name = shared.pop("numerics"), shared.pop("name")
  options = [
    p.replace(kind=p.KEYWORD_ONLY)
    for method in cls.option_methods
    for p in inspect.signature(getattr(cls, method)).parameters.values()
    if p.default is not p.empty
  ]
  return inspect.Signature(
    [*shared.values(), *options, numerics, name.replace(default=cls.default_name)]
  )

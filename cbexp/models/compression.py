"""The compression model: a backbone's transforms (``cbexp.models.transforms``) + factorized prior
on z + a pluggable entropy model.

    x -> g_a -> y -> h_a -> z  --(factorized prior)-->  z_hat
                y, z_hat --(entropy model)--> y_hat -> g_s -> x_hat

``call`` is the training forward pass; ``compress``/``decompress`` produce and consume real
range-coded strings (tensorflow-compression). Images of any size are padded to a multiple of
``PAD_MULTIPLE`` by edge replication and cropped back after decoding; bpp always counts the
unpadded pixels.
"""

import contextlib
import dataclasses
import types

import tensorflow as tf
import tensorflow_compression as tfc

from cbexp.constants import PAD_MULTIPLE, padded_size  # noqa: F401 (padded_size: for callers)
from cbexp.entropy.base import (
  CodingCost,
  EntropyModel,
  require_built,
  verify_strings,
)
from cbexp.errors import CbexpError
from cbexp.models import tiling
from cbexp.models.transforms.layers import HyperAnalysisTransform


@dataclasses.dataclass
class TrainOutput:
  loss: tf.Tensor
  bpp: tf.Tensor  # (y + z) bits per pixel, estimated
  y_bpp: tf.Tensor
  z_bpp: tf.Tensor
  mse: tf.Tensor  # on the 0..255 scale
  x_hat: tf.Tensor


@dataclasses.dataclass
class Compressed:
  """What ``compress`` returns: strings (z first, then the entropy model's), the image size the
  decoder needs, the symbol check of each string (``checks``: what a .cbx file of format
  2 stores) and the encoder's own y_hat (for exactness checks)."""

  strings: list  # of python bytes
  image_shape: tuple  # (height, width) of the unpadded image
  y_hat: tf.Tensor = None
  checks: list = None  # of python bytes (SYMBOL_CHECK_BYTES each), one per string
  check_format: int = 3  # of the checks (.cbx format 3; 2: files written before it)

  @property
  def num_bytes(self):
    return sum(len(s) for s in self.strings)


def pad_replicate(x, height, width):
  """Pads a [B, h, w, C] batch to [B, height, width, C] by repeating the last row/column (works
  for a 1x1 image, unlike reflection)."""
  rows = tf.minimum(tf.range(height), tf.shape(x)[1] - 1)
  cols = tf.minimum(tf.range(width), tf.shape(x)[2] - 1)
  return tf.gather(tf.gather(x, rows, axis=1), cols, axis=2)


def padded_shape(image_shape):
  """int32 [2] (height, width) -> the coded size: each side up to a multiple of PAD_MULTIPLE."""
  return (image_shape + PAD_MULTIPLE - 1) // PAD_MULTIPLE * PAD_MULTIPLE


def pad_to_multiple(image, dtype=tf.float32):
  """A uint8 image [H, W, 3] -> the batch [1, H', W', 3] the model codes, H' and W' the next
  multiples of PAD_MULTIPLE, the last row and column repeated; ``dtype`` float32 (what the
  transforms take) or uint8 (4x less memory: the codec casts tile by tile). An image already of
  that size is not copied."""
  x = tf.cast(tf.convert_to_tensor(image)[None], dtype)
  size = padded_shape(tf.shape(x)[1:3])
  return tf.cond(
    tf.reduce_all(size == tf.shape(x)[1:3]),
    lambda: x,
    lambda: pad_replicate(x, size[0], size[1]),
  )


def to_pixels(x_hat):
  """A synthesis's output (0..255, not clipped) -> uint8, rounded and saturated."""
  return tf.saturate_cast(tf.round(x_hat), tf.uint8)


def crop(x_hat, image_shape):
  """The inverse of ``pad_to_multiple`` on a decoded batch: the top-left ``image_shape`` of
  ``x_hat[0]``, rounded to uint8 (``to_pixels``) unless it is uint8 already."""
  x_hat = x_hat[0, : image_shape[0], : image_shape[1], :]
  return x_hat if x_hat.dtype == tf.uint8 else to_pixels(x_hat)


class SymbolCheckError(CbexpError, ValueError):
  """The decoder did not reproduce the encoder's symbols (an intact file)."""


def symbol_check_mismatch(stored, decoded):
  """Why a decode whose symbol checks differ from the ones the encoder stored is refused (one
  line naming the first string that differs: the later ones follow from it); None if equal."""
  if len(stored) != len(decoded):
    return f"{len(stored)} symbol checks stored, {len(decoded)} decoded"
  differ = [i for i, (a, b) in enumerate(zip(stored, decoded)) if bytes(a) != bytes(b)]
  if not differ:
    return None
  i = differ[0]
  which = "the z string" if i == 0 else f"string {i} (y string {i} of {len(stored) - 1})"
  return (
    f"symbol check failed for {which}, {len(differ)} of {len(stored)} strings differ "
    f"(stored {bytes(stored[i]).hex()}, decoded {bytes(decoded[i]).hex()}): the decoder "
    "decoded other symbols than the encoder coded, so its numeric environment differs "
    "from the encoder's (thread count, oneDNN, instruction set, GPU); decode on the "
    "encoder's kind of machine, or encode with an entropy.numerics=exact model (or the "
    "file was altered)"
  )


def compare_symbol_checks(stored, decoded):
  """Raises SymbolCheckError (``symbol_check_mismatch``) unless the checks are equal."""
  message = symbol_check_mismatch(stored, decoded)
  if message:
    raise SymbolCheckError(message)


class CompressionModel(tf.keras.Model):
  def __init__(
    self,
    analysis,
    synthesis,
    latent_depth,
    hyperprior_depth,
    hyper_analysis_filters,
    entropy_model: EntropyModel,
    lmbda=0.01,
    precision="float32",
  ):
    super().__init__(name="cbexp_model")
    from cbexp.models.precision import training_policy

    self.lmbda = float(lmbda)
    self.latent_depth = int(latent_depth)
    self.hyperprior_depth = int(hyperprior_depth)
    self.analysis = analysis  # g_a and g_s: a backbone's (cbexp.models.transforms.build_backbone)
    self.synthesis = synthesis
    with training_policy(precision):  # like g_a and g_s (cbexp.config.build_model)
      self.hyper_analysis = HyperAnalysisTransform(hyper_analysis_filters, hyperprior_depth)
    self.hyperprior = tfc.NoisyDeepFactorized(batch_shape=[hyperprior_depth])
    self.entropy_model = entropy_model
    self._z_training_model = tfc.ContinuousBatchedEntropyModel(
      self.hyperprior, coding_rank=3, compression=False, offset_heuristic=False
    )
    self._z_coder = None
    self.memory_budget_mb = float(tiling.DEFAULT_MEMORY_BUDGET_MB)
    self._tiles = None  # from the budget, when first needed (``tiles``)
    self._z_tables = None  # build_coders' tf.function of the hyperprior's tables
    self.build((None, None, None, 3))

  def call(self, x, training=False):
    """Training forward pass on a float batch in 0..255. Returns the loss terms. The transforms
    may compute in a mixed-precision policy (``cbexp.models.precision``); what they hand over
    is cast to float32, so the entropy models and the loss are float32."""
    x = tf.convert_to_tensor(x, tf.float32)
    num_pixels = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
    y = tf.cast(self.analysis(x), tf.float32)
    z = tf.cast(self.hyper_analysis(y), tf.float32)
    _, z_bits = self._z_training_model(z, training=training)
    z_hat = self._z_training_model.quantize(z)  # rounding, straight-through
    latent = self.entropy_model(y, z_hat, training=training)
    x_hat = tf.cast(self.synthesis(latent.y_hat), tf.float32)
    y_bpp = tf.reduce_sum(latent.bits) / num_pixels
    z_bpp = tf.reduce_sum(z_bits) / num_pixels
    mse = tf.reduce_mean(tf.math.squared_difference(x, x_hat))
    bpp = y_bpp + z_bpp
    return TrainOutput(
      loss=bpp + self.lmbda * mse, bpp=bpp, y_bpp=y_bpp, z_bpp=z_bpp, mse=mse, x_hat=x_hat
    )

  # --- range coding -----------------------------------------------------------------------
  def build_coders(self):
    """Builds range-coding tables from the current weights. Call after training or restoring,
    before compress/decompress: the z tables depend on the trained hyperprior.

    The hyperprior's tables are computed in a tf.function (traced once per model: it reads the
    current weights), about ten times faster than tfc's eager construction and equal to it bit
    for bit (tests/models/test_entropy_models.py), so that files and exports made with either
    have the same fingerprint."""
    if self._z_tables is None:
      self._z_tables = tf.function(self._hyperprior_tables)
    cdf, cdf_offset = self._z_tables()
    self._z_coder = tfc.ContinuousBatchedEntropyModel(
      coding_rank=3,
      compression=True,
      prior_shape=self.hyperprior.batch_shape,
      cdf=cdf,
      cdf_offset=cdf_offset,
      offset_heuristic=False,
    )
    self._z_cost = CodingCost(self._z_coder)  # a plain object: no checkpoint dependency
    self.entropy_model.build_coders()
    self._build_coding_graphs()

  def _build_coding_graphs(self):
    """The compress and decompress graphs over the current weights, coders and tiles."""
    self.tiles  # noqa: B018 (computed eagerly here, before the coding graphs trace with it)
    # The entropy model's networks over row bands within the same budget (float numerics).
    self.entropy_model.set_memory_budget(self.memory_budget_mb * 2**20)
    # g_a and h_a with their RDFT kernels computed once, not on every call (bit-identical;
    # cbexp.precision). Plain objects: no checkpoint dependencies.
    from cbexp.models.precision import coding_transform

    self._coding_analysis = coding_transform(self.analysis)
    self._coding_hyper_analysis = coding_transform(self.hyper_analysis)
    self._compress_graph = tf.function(
      self.compress_padded, input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)]
    )
    self.set_decode_precision(self.decode_precision)  # builds the decompress graph

  def _hyperprior_tables(self):
    coder = tfc.ContinuousBatchedEntropyModel(
      self.hyperprior, coding_rank=3, compression=True, stateless=True, offset_heuristic=False
    )
    return coder.cdf, coder.cdf_offset

  def require_coders(self):
    """Raises the error that says to call ``build_coders`` unless the tables are built."""
    require_built(self._z_coder)

  @property
  def z_coder(self):
    return require_built(self._z_coder)

  # --- tiled analysis and synthesis (cbexp.models.tiling) -----------------------------------
  @property
  def tiles(self):
    """(analysis tile, synthesis tile) in latent samples per side; 0: untiled. Set from the
    memory budget (``set_memory_budget``) when the coders are built."""
    if self._tiles is None:
      self._tiles = self._tiles_for_budget(self.memory_budget_mb)
    return self._tiles

  def _tiles_for_budget(self, budget_mb):
    if not budget_mb:
      return (0, 0)
    budget = float(budget_mb) * 2**20
    self._tile_bytes_per_latent = (
      tiling.activation_bytes_per_latent(self.analysis, 3),
      tiling.activation_bytes_per_latent(self.synthesis, self.latent_depth),
    )
    return tuple(tiling.tile_for_budget(budget, b) for b in self._tile_bytes_per_latent)

  def stream_tiles(self, plan):
    """(analysis tile, synthesis tile) inside a stream (``cbexp.models.streaming.Plan``): each
    gets the budget less what the stream keeps between calls (every output for the lag and two
    bands, ``streaming.run``, or for every row where that is fewer), at least half the budget,
    so that the peak stays near the process's base plus the budget on a wide image (ChARM
    keeps about 0.2 GB at 24 MP); (0, 0) when untiled. int32 tensors: the stream's rows
    depend on the image's width."""
    from cbexp.models import streaming

    if not self.tiles[0]:
      return (0, 0)
    budget = self.memory_budget_mb * 2**20
    pace = tf.maximum(plan.pace, plan.min_rows)
    kept_rows = tf.minimum(streaming.lag(plan.stages) + 2 * pace, plan.rows)
    kept = tf.cast(streaming.kept_bytes_per_row(plan.stages), tf.float64) * tf.cast(
      kept_rows, tf.float64
    )
    share = tf.maximum(budget - kept, budget / 2)
    return tuple(tiling.tile_for_budget(share, b) for b in self._tile_bytes_per_latent)

  def set_memory_budget(self, budget_mb=tiling.DEFAULT_MEMORY_BUDGET_MB):
    """Tiles the analysis and the synthesis so that the activations of each fit ``budget_mb``
    megabytes (``tiling.tile_for_budget``; 0: untiled), and runs the entropy model's networks
    over row bands within the same budget (``EntropyModel.set_memory_budget``). The strings do
    not change (tiled and untiled transforms agree bit for bit). Rebuilds the coding graphs if
    they are built (not the coders: their tables, and so the fingerprint, stay as they are)."""
    self.memory_budget_mb = float(budget_mb or 0)
    self._tiles = None
    if self._z_coder is not None:
      self._build_coding_graphs()

  def analyze(self, x, tile=None):
    """g_a of a padded image (uint8 or float32 [1, H, W, 3]) as the codec runs it: tiled when
    ``tiles`` says so (or by ``tile``, a stream's: ``stream_tiles``), the image cast to float32
    tile by tile."""
    tile = self.tiles[0] if tile is None else tile
    if not tf.is_tensor(tile) and not tile:
      return self._coding_analysis(tf.cast(x, tf.float32))
    return tiling.tiled(
      lambda part: self._coding_analysis(tf.cast(part, tf.float32)),
      x,
      tile,
      tiling.halo_latents(self.analysis),
      tiling.LATENT_STRIDE,
      1,
      self.latent_depth,
      tf.float32,
    )

  def synthesize_pixels(self, y_hat, tile=None):
    """g_s of decoded latents as the codec runs it, to uint8 pixels (``to_pixels``), tiled
    when ``tiles`` says so (or by ``tile``, a stream's: ``stream_tiles``): [1, H, W, 3] uint8,
    still padded."""
    tile = self.tiles[1] if tile is None else tile
    if not tf.is_tensor(tile) and not tile:
      return to_pixels(self.decoding_synthesis(y_hat))
    return tiling.tiled(
      lambda part: to_pixels(self.decoding_synthesis(part)),
      y_hat,
      tile,
      tiling.halo_latents(self.synthesis),
      1,
      tiling.LATENT_STRIDE,
      3,
      tf.uint8,
    )

  def compress_padded(self, x, with_latent=True):
    """Encodes ``x``, an image already padded by ``pad_to_multiple`` (uint8 or float32
    [1, H, W, 3], H and W multiples of PAD_MULTIPLE) -> (strings: string [1 + num_strings], z's
    first, then the entropy model's; y_hat: the latents the decoder reconstructs, None unless
    ``with_latent`` when streamed; symbol checks: uint8 [1 + num_strings, 4], one per string).
    Needs ``build_coders``. ``compress`` runs it as a tf.function; the codec export and the
    conformance matrix trace it into their own graphs. Streamed (``EntropyModel.streams``):
    the entropy model codes band by band (``cbexp.models.streaming``), the same strings."""
    streams = self.entropy_model.streams()
    if streams:
      z, latent = self.latent_source(x)  # its tile: the stream's (below)
    else:
      y = self.analyze(x)
      z = self._coding_hyper_analysis(y)
    z_string = self.z_coder.compress(z)
    z_hat = self.z_coder.decompress(z_string, tf.shape(z)[1:-1])
    if streams:
      plan = self.entropy_model.encoding_stream(latent, z_hat)
      latent.tile = self.stream_tiles(plan)[0]  # read when the stream's stages are traced
      states, _, y_hat = self._run_stream(plan, pixels=False, latent=with_latent)
      y_strings, y_checks = plan.finish(states)
    else:
      with self._collecting_checks() as checks:
        y_strings, y_hat = self.entropy_model.compress(y, z_hat)
      y_checks = checks.result
    return (
      tf.concat([z_string] + y_strings, axis=0),
      y_hat,
      self._symbol_checks(z_hat, y_checks),
    )

  def latent_source(self, x):
    """(z, ``streaming.Latent``) of a padded image for an encoding stream. While y, and its
    copy while its tiles are joined, take at most a quarter of the memory budget: y whole
    (``analyze``), z from it, the stream's rows cut from it. Above (ChARM's y is 0.12 GB at
    24 MP, 0.33 GB at 67 MP), y is never whole: z comes from a first stream over the image's
    rows (``z_by_bands``) and the coding stream runs the analysis again on the rows it asks
    for (``latent_band``, by the stream's tiles: ``Latent.tile``), one more analysis. The same
    z and y either way: a band's and a tile's interior are the whole transform's."""
    from cbexp.models import streaming

    depth = self.latent_depth
    rows, width = tf.shape(x)[1] // tiling.LATENT_STRIDE, tf.shape(x)[2] // tiling.LATENT_STRIDE
    y_bytes = tf.cast(rows, tf.float64) * tf.cast(width, tf.float64) * depth * 4
    whole = 2 * y_bytes <= self.memory_budget_mb * 2**20 / 4
    y = tf.cond(whole, lambda: self.analyze(x), lambda: tf.zeros([1, 0, 0, depth]))
    z = tf.cond(whole, lambda: self._coding_hyper_analysis(y), lambda: self.z_by_bands(x))

    def latent_rows(r0, r1, tile):
      return tf.cond(whole, lambda: y[:, r0:r1], lambda: self.latent_band(x, r0, r1, tile))

    return z, streaming.Latent(latent_rows, width)

  def latent_band(self, x, r0, r1, tile=None):
    """Latent rows [r0, r1) of y = g_a(x) (``analyze``, by ``tile``), from the image's rows
    they depend on (``tiling.halo_latents``: the analysis's receptive field)."""
    halo, rows = tiling.halo_latents(self.analysis), tf.shape(x)[1] // tiling.LATENT_STRIDE
    a0, a1 = tf.maximum(r0 - halo, 0), tf.minimum(r1 + halo, rows)
    stride = tiling.LATENT_STRIDE
    return self.analyze(x[:, a0 * stride : a1 * stride], tile)[:, r0 - a0 : r1 - a0]

  def z_by_bands(self, x):
    """z = h_a(g_a(x)) of a padded image without the whole y: a stream (``streaming.run``) of
    y's rows (``latent_band``, 4 latent rows per z row) and h_a over them with its halo (in z
    rows), each band's y and h_a's activations on it (about 4x) within half the budget."""
    from cbexp.models import streaming

    depth, width = self.latent_depth, tf.shape(x)[2] // tiling.LATENT_STRIDE
    per_z_row = 4 * tf.cast(width, tf.float64) * depth * 4  # y's bytes per z row
    pace = tf.maximum(1, tf.cast(self.memory_budget_mb * 2**20 / (8 * per_z_row), tf.int32))

    def latent(state, r0, r1, a0):
      return state, (self.latent_band(x, 4 * r0, 4 * r1),)

    def hyper_analysis(state, r0, r1, a0, y_rows):
      return state, (streaming.interior(self._coding_hyper_analysis(y_rows), r0, r1, a0),)

    stages = [
      streaming.Stage(latent, (streaming.Output(depth, width, 4),)),
      streaming.Stage(
        hyper_analysis,
        (streaming.Output(self.hyperprior_depth, width // 4),),
        (0,),
        tiling.halo_latents(self.hyper_analysis),
        collect=True,
      ),
    ]
    _, collected = streaming.run(stages, tf.shape(x)[1] // PAD_MULTIPLE, pace)
    return collected[1][0]

  def _run_stream(self, plan, pixels, latent):
    """Runs an entropy model's ``Plan`` (``cbexp.models.streaming``) with, if asked, the
    synthesis to uint8 pixels and the whole y_hat collected -> (the stages' final states,
    pixels [1, H, W, 3] or None, y_hat or None)."""
    from cbexp.models import streaming

    stages, unit = list(plan.stages), plan.unit
    join = lambda windows: tf.concat(windows, axis=-1)  # noqa: E731
    wanted = []
    if pixels:
      stride = tiling.LATENT_STRIDE * unit
      tile = self.stream_tiles(plan)[1]

      def synthesis(state, r0, r1, a0, *windows):
        out = self.synthesize_pixels(join(windows), tile)
        return state, (streaming.interior(out, r0, r1, a0, stride),)

      halo = -(-tiling.halo_latents(self.synthesis) // unit)
      output = streaming.Output(3, plan.width * tiling.LATENT_STRIDE, stride, tf.uint8)
      stages.append(streaming.Stage(synthesis, (output,), plan.latent, halo, collect=True))
      wanted.append(len(stages) - 1)
    if latent:
      output = streaming.Output(self.latent_depth, plan.width, unit)
      gather = lambda state, r0, r1, a0, *windows: (state, (join(windows),))  # noqa: E731
      stages.append(streaming.Stage(gather, (output,), plan.latent, collect=True))
      wanted.append(len(stages) - 1)
    states, collected = streaming.run(stages, plan.rows, plan.pace)
    results = iter([collected[s][0] for s in wanted])
    return (
      states,
      next(results) if pixels else None,
      next(results) if latent else None,
    )

  # --- the symbol check of each string (cbexp.bitstream, format 2) ---------------------------
  # The entropy model codes each of its strings through GaussianConditional.compress/decompress
  # (or calls its record_check itself, as the autoregressive model does), which records the
  # check of what it coded; the z string's check covers its symbols (z's tables are fixed).
  @contextlib.contextmanager
  def _collecting_checks(self):
    gaussian = self.entropy_model.gaussian
    collected = types.SimpleNamespace(result=None)
    gaussian.start_checks()
    try:
      yield collected
    finally:
      collected.result = gaussian.finish_checks()
    if len(collected.result) != self.entropy_model.num_strings:
      raise RuntimeError(
        f"the '{self.entropy_model.name}' entropy model recorded "
        f"{len(collected.result)} symbol checks for its "
        f"{self.entropy_model.num_strings} strings (one per string, "
        "GaussianConditional.record_check)"
      )

  @contextlib.contextmanager
  def format2_checks(self):
    """The coding traced inside computes the symbol checks of .cbx format 2 (files written before
    format 3), on the whole latent: format 2 hashes each string's symbols at once, which a
    stream cannot compute (``EntropyModel.streams``)."""
    gaussian = self.entropy_model.gaussian
    saved, gaussian.check_format = gaussian.check_format, 2
    try:
      yield
    finally:
      gaussian.check_format = saved

  def decompress_padded_format2(self, strings, padded_shape):
    """``decompress_padded`` with the checks of .cbx format 2 (whole latent)."""
    with self.format2_checks():
      return self.decompress_padded(strings, padded_shape)

  def _symbol_checks(self, z_hat, y_checks):
    z_check = self.entropy_model.gaussian.check_of(tf.round(z_hat))
    return tf.concat([z_check] + y_checks, axis=0)

  def decompress_padded(self, strings, padded_shape, with_latent=True):
    """Decodes ``compress_padded``'s strings (string [1 + num_strings]) of an image padded to
    ``padded_shape`` (int32 [2]) -> (the pixels: uint8 [1, H, W, 3], still padded: ``crop``
    them; y_hat, None unless ``with_latent`` when streamed; the decoder's symbol checks: uint8
    [1 + num_strings, 4]). Needs ``build_coders``. Streamed as ``compress_padded``: the pixels
    are computed band by band too, and come out only once every string has been verified."""
    z_shape = padded_shape // PAD_MULTIPLE
    y_shape = z_shape * 4
    z_hat = self.z_coder.decompress(strings[:1], z_shape)
    # Verified before anything else is decoded: a header that claims a larger image, or a
    # crafted z string, stops here (cheap) instead of after the whole decoder ran.
    channels = tf.range(self.hyperprior_depth)  # the z coder's table rows
    symbols = tf.cast(tf.round(z_hat), tf.int32) - tf.gather(self._z_cost.offsets, channels)
    z_hat = verify_strings(
      z_hat, strings[:1], self.z_coder.compress(z_hat), self._z_cost(symbols, channels)
    )
    y_strings = [strings[i + 1 : i + 2] for i in range(self.entropy_model.num_strings)]
    if self.entropy_model.streams():
      plan = self.entropy_model.decoding_stream(y_strings, z_hat, y_shape)
      states, pixels, y_hat = self._run_stream(plan, pixels=True, latent=with_latent)
      y_checks = plan.finish(states)
      with tf.control_dependencies(y_checks):  # no pixels from strings that do not verify
        pixels = tf.identity(pixels)
    else:
      with self._collecting_checks() as checks:
        y_hat = self.entropy_model.decompress(y_strings, z_hat, y_shape)
      pixels, y_checks = self.synthesize_pixels(y_hat), checks.result
    return pixels, y_hat, self._symbol_checks(z_hat, y_checks)

  @property
  def decode_precision(self):
    return getattr(self, "_decode_precision", "float32")

  def set_decode_precision(self, precision="float32"):
    """Runs the synthesis in "float32" (the reference) or "bfloat16" when decoding
    (cbexp.precision): the strings do not change, the reconstruction slightly does. The
    kernels are a snapshot of the weights; ``build_coders`` takes a new one."""
    from cbexp.models.precision import check_precision, coding_transform

    self._decode_precision = check_precision(precision)
    # The synthesis the decoder runs: kernels materialized once (a plain object, no tf.Module:
    # no checkpoint dependencies). In float32 the output is bit-identical to self.synthesis,
    # without recomputing the RDFT kernel parameterization on every call.
    self.decoding_synthesis = coding_transform(self.synthesis, precision)
    self.entropy_model.set_decode_precision(precision)  # its LRP, where that is safe
    signature = [
      tf.TensorSpec([1 + self.entropy_model.num_strings], tf.string),
      tf.TensorSpec([2], tf.int32),
    ]
    self._decompress_graph = tf.function(self.decompress_padded, input_signature=signature)
    # Files with format 2 checks: traced on the first such file only.
    self._format2_decompress_graph = tf.function(
      self.decompress_padded_format2, input_signature=signature
    )

  def compress(self, image):
    """Compresses one uint8 image [H, W, 3] (any H, W >= 1). Returns ``Compressed``."""
    self.require_coders()
    image = tf.convert_to_tensor(image)
    height, width = int(image.shape[0]), int(image.shape[1])
    strings, y_hat, checks = self._compress_graph(pad_to_multiple(image, tf.uint8))
    return Compressed(
      strings=[bytes(s) for s in strings.numpy()],
      image_shape=(height, width),
      y_hat=y_hat,
      checks=[bytes(c) for c in checks.numpy()],
    )

  def decompress(self, compressed: Compressed, return_latent=False):
    """Inverse of ``compress``: the uint8 image [H, W, 3] (and y_hat if asked). If
    ``compressed.checks`` is given, the decoder's symbol checks must equal them
    (SymbolCheckError otherwise, naming the first string that differs)."""
    self.require_coders()
    image_shape = tf.constant(compressed.image_shape, tf.int32)
    strings = tf.constant(compressed.strings, tf.string)
    graph = self._decompress_graph
    if compressed.checks is not None and compressed.check_format == 2:
      graph = self._format2_decompress_graph
    x_hat, y_hat, checks = graph(strings, padded_shape(image_shape))
    if compressed.checks is not None:
      compare_symbol_checks(compressed.checks, [bytes(c) for c in checks.numpy()])
    image = crop(x_hat, image_shape)
    return (image, y_hat) if return_latent else image

  def estimate_bits(self, image):
    """The model's estimated rate (bits, y and z) of the *quantized* latents of one uint8 image,
    computed by the forward pass with ``training=False``: compare with ``compress``'s strings."""
    y = self.analysis(pad_to_multiple(image))
    z = self.hyper_analysis(y)
    _, z_bits = self._z_training_model(z, training=False)
    latent = self.entropy_model(y, tf.round(z), training=False)
    return {"y": float(tf.reduce_sum(latent.bits)), "z": float(tf.reduce_sum(z_bits))}

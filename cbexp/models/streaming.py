"""Streamed coding: the codec's work as stages over bands of rows, run as a wavefront in one graph.

Tiling the transforms (``cbexp.models.tiling``) bounds their activations, but the range coder,
the entropy parameters and the decoded latents would still be whole-latent tensors, several times
the image's size in bytes. Here every part of the work is a ``Stage`` that computes a band of
rows from bands of the stages before it (with ``halo`` rows of real context above and below),
and ``run`` drives them all in one ``tf.while_loop``: each iteration the first stage produces
about ``pace`` more rows and every later stage computes what its inputs now allow. A stage's
output is kept only while a later stage may still read it, so memory follows the band, not the
image; the range coders keep their state (tfc's encoder or decoder handle) across bands, so the
strings are the ones the whole latent gives.

Rows are "stream rows": the entropy model chooses the unit (a latent row, or the checkerboard's
packed row of two latent rows); an output holds ``scale`` of its own rows per stream row (the
synthesis's 16 or 32 pixel rows). A network stage computes at least ``min_rows`` rows per call
(the last call aside: it takes what is left, never fewer than ``min_rows``), so that its matrix
products run the kernel of the whole tensor (``tiling.MIN_BAND_POSITIONS``).
"""

import dataclasses

import tensorflow as tf


@dataclasses.dataclass
class Output:
  """One output of a stage: ``[1, rows * scale, width, channels]`` of ``dtype``."""

  channels: int
  width: object  # int or int32 scalar tensor
  scale: int = 1
  dtype: tf.DType = tf.float32


@dataclasses.dataclass
class Stage:
  """``fn(state, r0, r1, a0, *windows)`` -> ``(state, outputs)``: rows [r0, r1) of each output,
  ``windows`` being the outputs of the ``inputs`` stages, in order, over rows [a0, a1) with
  a0 = max(r0 - halo, 0) and a1 = min(r1 + halo, rows). ``state``: tensors carried from call to
  call (a range coder's handle, sums), returned by ``run``. ``collect``: the outputs are returned
  whole by ``run`` (the decoded image) instead of passed on."""

  fn: object
  outputs: tuple
  inputs: tuple = ()
  halo: int = 0
  min_rows: int = 1
  state: tuple = ()
  collect: bool = False


def interior(window, r0, r1, a0, scale=1):
  """Rows [r0, r1) of a window that starts at row a0 (``scale`` rows per stream row)."""
  return window[:, (r0 - a0) * scale : (r1 - a0) * scale]


def _empty(output):
  return tf.zeros([1, 0, output.width, output.channels], output.dtype)


def _relaxed(value):
  """The loop's shape invariant of a value: a buffer's rows and width, a state's growing first
  axis (row fingerprints) may change; a buffer's channels do not."""
  if isinstance(value, tf.TensorArray):
    return tf.TensorShape(None)
  shape = value.shape
  if shape.rank == 4:
    return tf.TensorShape([1, None, None, shape[3]])
  if shape.rank is not None and shape.rank >= 1:
    return tf.TensorShape([None] * shape.rank)
  return shape


def lag(stages):
  """The rows by which the last stage of the longest chain of halos trails the first, among the
  stages that run (``_needed``): the encoder's last LRP, which only the decoder needs, does not
  hold the others' outputs back."""
  behind = []
  for stage, runs in zip(stages, _needed(stages)):
    trail = max((behind[u] for u in stage.inputs), default=0) + stage.halo
    behind.append(trail if runs else 0)
  return max(behind)


def _readers(stages):
  """For each stage, the stages that read it."""
  return [[c for c in range(len(stages)) if s in stages[c].inputs] for s in range(len(stages))]


def _needed(stages):
  """For each stage, whether it runs. A stage whose outputs nothing needs (no state, not
  collected, no reader that is needed) does not: the encoder's stream ends with the decoder's
  y_hat stages, which only a caller that asks for y_hat reads."""
  readers, needed = _readers(stages), [False] * len(stages)
  for s in reversed(range(len(stages))):
    stage = stages[s]
    needed[s] = bool(stage.state or stage.collect or any(needed[c] for c in readers[s]))
  return needed


def kept_bytes_per_row(stages):
  """Bytes of one stream row of every output the stream keeps between calls: those of the
  stages that run, the collected ones aside (they are the result)."""
  return sum(
    output.channels * output.scale * output.dtype.size * output.width
    for stage, needed in zip(stages, _needed(stages))
    if needed and not stage.collect
    for output in stage.outputs
  )


def run(stages, rows, pace):
  """Runs ``stages`` (in dependency order: a stage reads only earlier ones) over ``rows`` stream
  rows, the first stages (those without inputs) producing ``pace`` rows per iteration, or the
  most ``min_rows`` where that is more. A later stage computes what its inputs allow, at least
  ``min_rows`` and at most two paces a call: one that had to wait for its inputs (their halos
  had not yet left it ``min_rows`` rows) catches up in its next call, so that each stage trails
  the first by the halos before it and less than a band, and an output is kept for the ``lag``
  plus about two bands, whatever the lag (a pace of ``lag + min_rows`` would keep every output
  for twice the lag). No call leaves fewer than ``min_rows`` rows for the last one.
  A stage that nothing needs (no state, not collected, no needed reader) is not run.
  -> (the final state of each stage, the whole outputs of each ``collect`` stage: a tuple of
  [1, rows * scale, width, channels] tensors; () for the others)."""
  count = len(stages)
  readers = _readers(stages)
  for s, stage in enumerate(stages):
    if any(u >= s for u in stage.inputs):
      raise ValueError(f"stage {s} reads a later stage: {stage.inputs}")
  needed = _needed(stages)
  rows = tf.convert_to_tensor(rows, tf.int32)
  least = tf.reduce_max(tf.stack([tf.cast(st.min_rows, tf.int32) for st in stages]))
  pace = tf.maximum(tf.convert_to_tensor(pace, tf.int32), least)

  def available(s, progress):
    """Rows up to which stage s can compute now."""
    stage, done = stages[s], progress[s]
    if not stage.inputs:
      after = done + pace
      return tf.where(rows - after < stage.min_rows, rows, after)
    ready = rows
    for u in stage.inputs:
      ready = tf.minimum(
        ready, tf.where(progress[u] >= rows, rows, tf.maximum(progress[u] - stage.halo, 0))
      )
    return ready

  def step(s, progress, lows, buffers, states):
    """Stage s's call this iteration, if its inputs allow: -> (state, bands, progress)."""
    stage, done = stages[s], progress[s]
    ready = tf.maximum(available(s, progress), done)
    # At most a pace a call for the first stages, two for the others (``run``), and never fewer
    # than ``min_rows`` left for a last call: rows - min_rows where the cap would leave fewer.
    least_left = stage.min_rows
    capped = done + (2 * pace if stage.inputs else pace)
    ready = tf.where(
      ready > capped,
      tf.where(
        rows - capped >= least_left,
        capped,
        tf.where(rows - least_left - done >= least_left, rows - least_left, ready),
      ),
      ready,
    )
    take = ready - done
    go = ((ready >= rows) & (take > 0)) | (
      (take >= stage.min_rows) & (rows - ready >= stage.min_rows)
    )

    def compute():
      r0, r1 = done, ready
      a0, a1 = tf.maximum(r0 - stage.halo, 0), tf.minimum(r1 + stage.halo, rows)
      windows = [
        buffer[:, (a0 - lows[u]) * output.scale : (a1 - lows[u]) * output.scale]
        for u in stage.inputs
        for buffer, output in zip(buffers[u], stages[u].outputs)
      ]
      state, bands = stage.fn(tuple(states[s]), r0, r1, a0, *windows)
      return tuple(state), tuple(bands), r1

    def skip():
      return tuple(states[s]), tuple(_empty(o) for o in stage.outputs), done

    return tf.cond(go, compute, skip)

  def body(progress, lows, buffers, states, collected):
    progress, lows = list(progress), list(lows)
    buffers, states, collected = list(buffers), list(states), list(collected)
    previous = []  # the last call's results: the next call starts after them
    for s, stage in enumerate(stages):
      if not needed[s]:
        continue
      with tf.control_dependencies(previous):
        states[s], bands, progress[s] = step(s, progress, lows, buffers, states)
      previous = [progress[s], *bands]
      if stage.collect:
        collected[s] = tuple(ta.write(ta.size(), band[0]) for ta, band in zip(collected[s], bands))
      else:
        buffers[s] = tuple(
          tf.concat([buffer, band], axis=1) for buffer, band in zip(buffers[s], bands)
        )
    for s, stage in enumerate(stages):  # forget the rows no reader will read again
      if stage.collect:
        continue
      keep = progress[s]
      for c in readers[s]:
        keep = tf.minimum(keep, tf.maximum(progress[c] - stages[c].halo, 0))
      buffers[s] = tuple(
        buffer[:, (keep - lows[s]) * output.scale :]
        for buffer, output in zip(buffers[s], stage.outputs)
      )
      lows[s] = keep
    return tuple(progress), tuple(lows), tuple(buffers), tuple(states), tuple(collected)

  zero = tf.constant(0)
  loop_vars = (
    tuple(zero if needed[s] else rows for s in range(count)),
    tuple(zero for _ in stages),
    tuple(() if st.collect else tuple(_empty(o) for o in st.outputs) for st in stages),
    tuple(tuple(st.state) for st in stages),
    tuple(
      tuple(
        tf.TensorArray(
          o.dtype,
          size=0,
          dynamic_size=True,
          infer_shape=False,
          element_shape=tf.TensorShape([None, None, o.channels]),
        )
        for o in st.outputs
      )
      if st.collect
      else ()
      for st in stages
    ),
  )
  _, _, _, states, collected = tf.while_loop(
    lambda progress, *_: tf.reduce_any(tf.stack(progress) < rows),
    body,
    loop_vars,
    shape_invariants=tf.nest.map_structure(_relaxed, loop_vars),
    parallel_iterations=1,
  )
  return states, tuple(tuple(ta.concat()[None] for ta in outs) for outs in collected)


@dataclasses.dataclass
class Latent:
  """y for an encoding stream: ``rows(r0, r1)`` -> its latent rows [r0, r1), [1, r1 - r0,
  width, depth], computed when the stream asks for them (``CompressionModel.latent_source``:
  cut from the whole y, or the analysis run again on the image's band, by ``tile``: set once
  the stream's plan, and so what it keeps, is known)."""

  band: object  # band(r0, r1, tile) -> the rows
  width: object
  tile: object = None

  def rows(self, r0, r1):
    return self.band(r0, r1, self.tile)

  @classmethod
  def of(cls, y):
    """The rows of a whole y."""
    return cls(lambda r0, r1, tile: y[:, r0:r1], tf.shape(y)[2])


@dataclasses.dataclass
class Plan:
  """An entropy model's coding as stages (``EntropyModel.encoding_stream``/``decoding_stream``):
  ``stages`` over ``rows`` stream rows of ``unit`` latent rows each, ``width`` latent columns;
  the first outputs of the ``latent`` stages, joined along channels, are y_hat (``unit`` rows per
  stream row); ``finish(states)`` turns the stages' final states into the strings and checks
  (encoding: (strings, checks)) or the verified checks (decoding)."""

  stages: list
  rows: object
  width: object
  unit: int
  latent: tuple
  finish: object
  pace: object
  min_rows: int

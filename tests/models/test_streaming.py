"""Streamed coding (cbexp/models/streaming.py): stages over bands of rows, run as a wavefront,
give what the whole tensors give; no network band is smaller than its minimum; the entropy
models' streams code the whole latent's strings and refuse strings that do not verify, before
any pixel comes out. (tests/models/test_tiling.py: streamed and whole files decode either way.)"""

import threading

import numpy as np
import pytest
import tensorflow as tf

from cbexp.codec.codec import Codec, CodecError
from cbexp.load import build_untrained
from cbexp.models import streaming, tiling
from helpers.models import tiny_overrides


def blur(x, halo):
  """Sum over 2 * halo + 1 rows (zero padding at the border): an output row depends on the input
  rows within ``halo``."""
  channels = x.shape[-1]
  return tf.nn.depthwise_conv2d(x, tf.ones([2 * halo + 1, 1, channels, 1]), [1, 1, 1, 1], "SAME")


@pytest.mark.parametrize(
  "pace, min_rows", [(1, 1), (4, 1), (4, 6), (10, 3), (11, 6), (3, 20), (50, 1)]
)
def test_a_stream_of_stages_with_halos_equals_the_whole_computation(pace, min_rows):
  x = tf.constant(np.random.default_rng(0).normal(size=(1, 37, 5, 3)).astype(np.float32))
  whole = blur(blur(x, 1), 2)

  def source(state, r0, r1, a0):
    return state, (x[:, r0:r1],)

  def stage(halo):
    def fn(state, r0, r1, a0, window):
      sizes = tf.concat([state[0], [r1 - r0]], 0)  # every call's band, to check below
      return (sizes,), (streaming.interior(blur(window, halo), r0, r1, a0),)

    return fn

  def twice(state, r0, r1, a0, window):  # a collected output of another scale
    return state, (tf.repeat(window, 2, axis=1),)

  output = (streaming.Output(3, 5),)
  sizes = (tf.zeros([0], tf.int32),)
  stages = [
    streaming.Stage(source, output),
    streaming.Stage(stage(1), output, (0,), 1, min_rows, sizes),
    streaming.Stage(stage(2), output, (1,), 2, min_rows, sizes, collect=True),
    streaming.Stage(twice, (streaming.Output(3, 5, 2),), (1,), collect=True),
  ]
  states, collected = tf.function(lambda: streaming.run(stages, 37, pace))()
  np.testing.assert_array_equal(collected[2][0].numpy(), whole.numpy())
  np.testing.assert_array_equal(collected[3][0].numpy(), tf.repeat(blur(x, 1), 2, axis=1).numpy())
  effective = max(pace, min_rows)  # the pace run uses
  for s in (1, 2):
    bands = states[s][0].numpy()
    assert bands.sum() == 37 and bands.min() >= min(min_rows, 37), bands
    # At most two paces a call (a stage that waited for its inputs catches up), or what is
    # left where that is fewer than two min_rows: a later stage does not take the first
    # stage's last band and everything its lag held back at once.
    assert bands.max() <= max(2 * effective, 2 * min_rows - 1), bands
  assert streaming.lag(stages) == 3
  assert len(states[1][0]) >= 37 // (2 * effective)  # many bands, not one


@pytest.mark.parametrize("pace, min_rows", [(1, 1), (3, 2), (4, 4), (2, 5)])
def test_a_stage_trails_the_first_by_its_halos_and_less_than_two_bands(pace, min_rows):
  """A chain of halos longer than the pace (lag 12 rows): each stage trails the first stage by
  the halos before it and at most two paces (it catches up after waiting), so the first
  stage's rows are kept for the lag plus two bands, not for a growing backlog."""
  front = tf.Variable(0)

  def source(state, r0, r1, a0):
    with tf.control_dependencies([front.assign(r1)]):
      return state, (tf.identity(x[:, r0:r1]),)

  def last(state, r0, r1, a0, window):  # how far the first stage is ahead of this call
    return (tf.concat([state[0], [front - r0]], 0),), (streaming.interior(window, r0, r1, a0),)

  x = tf.reshape(tf.range(80, dtype=tf.float32), [1, 80, 1, 1])
  output = (streaming.Output(1, 1),)
  chain = [streaming.Stage(source, output)]
  for s in range(3):
    chain.append(
      streaming.Stage(
        lambda st, r0, r1, a0, w: (st, (w[:, r0 - a0 : r1 - a0],)), output, (s,), 4, min_rows
      )
    )
  chain.append(
    streaming.Stage(last, output, (3,), 0, min_rows, (tf.zeros([0], tf.int32),), collect=True)
  )
  states, collected = tf.function(lambda: streaming.run(chain, 80, pace))()
  np.testing.assert_array_equal(collected[4][0].numpy(), x.numpy())
  ahead = states[4][0].numpy()
  effective = max(pace, min_rows)
  assert streaming.lag(chain) == 12
  assert ahead.max() <= 12 + 2 * effective + min_rows, ahead


def test_the_calls_of_an_iteration_run_one_after_another():
  """Two stages that read only the first could run at once, each with a band's work, and the
  budget is one call's work: they run one after the other. Each call waits up to 0.5 s for
  another to be running beside it."""
  lock, running, most = threading.Condition(), [0], [0]

  def busy(band):
    with lock:
      running[0] += 1
      most[0] = max(most[0], running[0])
      lock.notify_all()
      lock.wait_for(lambda: running[0] > 1, timeout=0.5)
      running[0] -= 1
    return band

  def reader(state, r0, r1, a0, window):
    return state, (tf.numpy_function(busy, [window], tf.float32, stateful=False),)

  x = tf.ones([1, 8, 3, 1])
  output = (streaming.Output(1, 3),)
  stages = [
    streaming.Stage(lambda state, r0, r1, a0: (state, (x[:, r0:r1],)), output),
    streaming.Stage(reader, output, (0,), collect=True),
    streaming.Stage(reader, output, (0,), collect=True),
  ]
  _, collected = tf.function(lambda: streaming.run(stages, 8, 8))()
  assert collected[1][0].shape == collected[2][0].shape == (1, 8, 3, 1)
  assert most[0] == 1


def test_the_budget_pays_for_what_the_stream_keeps():
  """A stream's pace: two bands' activations and every kept output for the lag plus two
  bands, twice, within the budget (the paper ChARM's 320-channel slices and hyper outputs at 352
  latent columns: a 24 MP image), or the fewest rows a call takes."""
  model, _ = build_untrained(tiny_overrides("charm", "entropy.num_slices=2"), seed=0)
  em, budget, width = model.entropy_model, 64 * 2**20, 352
  em.set_memory_budget(budget)
  y, z = tf.zeros([1, 400, width, em.latent_depth]), tf.zeros([1, 100, width // 4, 8])
  plan = em.encoding_stream(streaming.Latent.of(y), z)
  pace, kept = int(plan.pace), int(streaming.kept_bytes_per_row(plan.stages))
  lag, call = streaming.lag(plan.stages), budget / em.band_positions * width
  # The outputs of the stages that run, float32: the hyper's two paths and y's rows, each
  # slice's coded values, the first slice's LRP (the second reads it; the last one's only the
  # decoder needs).
  depth = em.latent_depth
  assert kept == 4 * width * (3 * depth + depth + depth // 2)

  def spent(rows):  # a call of up to two bands and what the stream keeps meanwhile
    return 2 * call * rows + 2 * (lag + 2 * rows) * kept

  assert pace == em.stream_min_rows(width) or spent(pace) <= budget < spent(pace + 1)
  assert pace < em.band_positions // width  # the band alone would be more rows


def test_a_stage_nothing_needs_is_not_run():
  """No state, not collected, no reader (the decoder's y_hat stages in the encoder's stream):
  not even traced."""
  x = tf.reshape(tf.range(12.0), [1, 4, 3, 1])

  def unneeded(state, r0, r1, a0, window):
    raise AssertionError("an unneeded stage ran")

  output = (streaming.Output(1, 3),)
  stages = [
    streaming.Stage(lambda state, r0, r1, a0: (state, (x[:, r0:r1],)), output),
    streaming.Stage(unneeded, output, (0,)),
    streaming.Stage(lambda state, r0, r1, a0, w: (state, (w * 2,)), output, (0,), collect=True),
  ]
  _, collected = streaming.run(stages, 4, 1)
  np.testing.assert_array_equal(collected[2][0].numpy(), x.numpy() * 2)
  # Its halo does not count in the lag (the rows the others' outputs are kept for).
  assert streaming.lag(stages) == 0
  stages[1] = streaming.Stage(unneeded, output, (0,), halo=5)
  assert streaming.lag(stages) == 0
  stages[2] = streaming.Stage(stages[2].fn, output, (0,), halo=2, collect=True)
  assert streaming.lag(stages) == 2


def test_a_stage_may_read_only_earlier_stages():
  stage = streaming.Stage(lambda *a: a, (streaming.Output(1, 1),), inputs=(0,))
  with pytest.raises(ValueError, match="stage 0 reads a later stage"):
    streaming.run([stage], 4, 1)


@pytest.fixture(scope="module", params=["checkerboard", "charm"])
def streamed(request):
  """A tiny model whose coding streams in bands of one to three latent rows."""
  extra = ["entropy.num_slices=2", "entropy.max_support_slices=1"]
  model, cfg = build_untrained(
    tiny_overrides(request.param, *(extra if request.param == "charm" else [])), seed=0
  )
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tiling, "MIN_BAND_POSITIONS", 1)
    model.set_memory_budget(0.02)
    assert model.entropy_model.streams() and 0 < model.entropy_model.band_positions < 48
    codec = Codec.from_model(model, cfg)
    image = np.random.default_rng(5).integers(0, 256, (200, 328, 3), dtype=np.uint8)
    stream = codec.encode(image)
    yield model, codec, stream


def test_a_stream_refuses_strings_that_do_not_verify(streamed):
  """A changed byte in the middle of a y string, or a string cut short, is refused by the
  streamed decoder (re-encoding, cost and tfc's own check at the end of the stream) in one
  line; the pixels it computed band by band never come out."""
  import dataclasses

  _, codec, stream = streamed
  assert codec.decode(stream).shape == (200, 328, 3)
  last = stream.strings[-1]
  changed = (
    last[: len(last) // 2] + bytes([last[len(last) // 2] ^ 0x10]) + last[len(last) // 2 + 1 :]
  )
  for bad in (changed, last[: len(last) // 2]):
    broken = dataclasses.replace(stream, strings=stream.strings[:-1] + (bad,))
    with pytest.raises(CodecError, match="cannot decode"):
      codec.decode(broken)

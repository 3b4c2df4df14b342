"""cbexp.evaluation.complexity against MAC counts worked out by hand for tiny models on a 64x128
image (latent grid 4x8 = 32 positions, z grid 1x2)."""

import pytest

from cbexp.config import build_model, compose
from cbexp.evaluation.complexity import decode_kmac_per_pixel, encode_kmac_per_pixel

PIXELS = 64 * 128
LATENT = 4 * 8
# tiny transform: num_filters 16, latent 40, hyperprior 16, h_a [32, 24], h_s [16, 24]
HYPER_SYNTHESIS = (
  2 * 25 * 16 * 16  # 5x5 transpose 16->16 on the 1x2 z grid
  + 8 * 25 * 16 * 24  # 5x5 transpose 16->24 on 2x4
  + 32 * 9 * 24 * 40
)  # 3x3 24->40 on 4x8
SYNTHESIS = (
  32 * 25 * 40 * 16
  + 128 * 16 * 16  # transpose 40->16, IGDN on 8x16
  + 128 * 25 * 16 * 16
  + 512 * 16 * 16  # 16->16, IGDN on 16x32
  + 512 * 25 * 16 * 16
  + 2048 * 16 * 16  # 16->16, IGDN on 32x64
  + 2048 * 25 * 16 * 3
)  # 16->3 (to 64x128)
ANALYSIS = (
  2048 * 25 * 3 * 16
  + 2048 * 16 * 16  # 5x5/2 3->16 + GDN on 32x64
  + 512 * 25 * 16 * 16
  + 512 * 16 * 16
  + 128 * 25 * 16 * 16
  + 128 * 16 * 16
  + 32 * 25 * 16 * 40
)  # -> 40 channels on 4x8
HYPER_ANALYSIS = 32 * 9 * 40 * 32 + 8 * 25 * 32 * 24 + 2 * 25 * 24 * 16


def slice_transform(c_in, c_out, hidden=16):
  """5x5 c_in->hidden, 5x5 hidden->hidden, 3x3 hidden->c_out at the 32 latent positions."""
  return LATENT * (25 * c_in * hidden + 25 * hidden * hidden + 9 * hidden * c_out)


def tiny(entropy):
  return build_model(
    compose(["transform=tiny", f"entropy={entropy}", "entropy.hidden_filters=[16,16]"])
  )


def kmac(macs):
  return macs / PIXELS / 1e3


@pytest.fixture(scope="module")
def checkerboard():
  return tiny("checkerboard")


def test_checkerboard_decode_counts(checkerboard):
  got = decode_kmac_per_pixel(checkerboard, height=64, width=128)
  # 1x1 entropy parameters 40(+80 context)->120->80->80 on 16 anchors, then 16 non-anchors.
  anchors = 16 * (40 * 120 + 120 * 80 + 80 * 80)
  non_anchors = 16 * (40 * 120 + 80 * 120 + 120 * 80 + 80 * 80)
  expected = {
    "hyper_synthesis": HYPER_SYNTHESIS,
    # at the 16 non-anchors only: 3x3 over the two packed anchor grids, 2 x 40 -> 80
    "context": 16 * 9 * 2 * 40 * 80,
    "entropy_parameters": anchors + non_anchors,
    "lrp": slice_transform(40, 40),
    "synthesis": SYNTHESIS,
  }
  for stage, macs in expected.items():
    assert got[stage] == pytest.approx(kmac(macs)), stage
  assert got["total"] == pytest.approx(kmac(sum(expected.values())))


def test_full_grid_context_counts():
  # the masked 5x5 40->80 computed at every position: 25 * 32 / (18 * 16) = 2.8x the coded one
  got = decode_kmac_per_pixel(
    build_model(
      compose(
        [
          "transform=tiny",
          "entropy=checkerboard",
          "entropy.hidden_filters=[16,16]",
          "entropy.context_positions=full_grid",
        ]
      )
    ),
    height=64,
    width=128,
  )
  assert got["context"] == pytest.approx(kmac(LATENT * 25 * 40 * 80))


def test_checkerboard_encode_counts(checkerboard):
  got = encode_kmac_per_pixel(checkerboard, height=64, width=128)
  assert got["analysis"] == pytest.approx(kmac(ANALYSIS))
  assert got["hyper_analysis"] == pytest.approx(kmac(HYPER_ANALYSIS))
  assert "synthesis" not in got
  decode = decode_kmac_per_pixel(checkerboard, height=64, width=128)
  assert got["total"] == pytest.approx(
    decode["total"] - decode["synthesis"] + kmac(ANALYSIS + HYPER_ANALYSIS)
  )


def test_charm_and_hyperprior_decode_counts():
  got = decode_kmac_per_pixel(tiny("charm"), height=64, width=128)
  mean_scale = sum(2 * slice_transform(40 + 4 * min(i, 5), 4) for i in range(10))
  lrp = sum(slice_transform(40 + 4 * min(i, 5) + 4, 4) for i in range(10))
  assert got["hyper_synthesis"] == pytest.approx(kmac(2 * HYPER_SYNTHESIS))
  assert got["entropy_parameters"] == pytest.approx(kmac(mean_scale))
  assert got["lrp"] == pytest.approx(kmac(lrp))
  assert got["context"] == 0
  assert got["total"] == pytest.approx(kmac(2 * HYPER_SYNTHESIS + mean_scale + lrp + SYNTHESIS))

  got = decode_kmac_per_pixel(tiny("hyperprior"), height=64, width=128)
  assert got["entropy_parameters"] == pytest.approx(kmac(LATENT * (40 * 120 + 120 * 80 + 80 * 80)))
  assert got["total"] == pytest.approx(
    kmac(HYPER_SYNTHESIS + LATENT * 20800 + slice_transform(40, 40) + SYNTHESIS)
  )


def test_padding_and_bad_size(checkerboard):
  # 50x100 pads to 64x128: the same MACs, spread over the padded pixels.
  assert (
    decode_kmac_per_pixel(checkerboard, 50, 100)["total"]
    == decode_kmac_per_pixel(checkerboard, 64, 128)["total"]
  )
  with pytest.raises(ValueError, match="image size"):
    decode_kmac_per_pixel(checkerboard, 0, 64)


def test_checkerboard_like_for_like_switches_are_counted():
  model = build_model(
    compose(
      [
        "transform=tiny",
        "entropy=checkerboard",
        "entropy.hidden_filters=[16,16]",
        "entropy.two_hyper_paths=true",
        "entropy.lrp_on_y_hat=true",
      ]
    )
  )
  got = decode_kmac_per_pixel(model, height=64, width=128)
  assert got["hyper_synthesis"] == pytest.approx(kmac(2 * HYPER_SYNTHESIS))
  # g_ep's first layer sees both hyper paths (80 channels); LRP sees concat[hyper, y_hat]
  anchors = 16 * (80 * 120 + 120 * 80 + 80 * 80)
  non_anchors = 16 * (80 * 120 + 80 * 120 + 120 * 80 + 80 * 80)
  assert got["entropy_parameters"] == pytest.approx(kmac(anchors + non_anchors))
  assert got["lrp"] == pytest.approx(kmac(slice_transform(80, 40)))


def test_sliced_and_serial_models_decode_counts():
  # charm_checkerboard, tiny slices [2, 2, 4, 8, 24] (the paper's [16, 16, 32, 64, 192] scaled to
  # 40 channels), every earlier slice as support: per slice d, channel context (two slice
  # transforms on concat[hyper, support] -> d), g_ep d->3d->2d->2d (+2d context) on 16 anchors and
  # 16 non-anchors, the d->2d context at the 16 non-anchors, LRP on concat[hyper, support,
  # y_hat_i].
  got = decode_kmac_per_pixel(tiny("charm_checkerboard"), height=64, width=128)
  slices = [2, 2, 4, 8, 24]
  channel, context, params, lrp = 0, 0, 0, 0
  for i, d in enumerate(slices):
    support = sum(slices[:i])
    channel += 2 * slice_transform(40 + support, d)
    params += 16 * (2 * d * 3 * d + 3 * d * 2 * d + 2 * d * 2 * d) + 16 * (
      2 * d * 3 * d + 2 * d * 3 * d + 3 * d * 2 * d + 2 * d * 2 * d
    )
    context += 16 * 9 * 2 * d * 2 * d
    lrp += slice_transform(40 + support + d, d)
  assert got["hyper_synthesis"] == pytest.approx(kmac(2 * HYPER_SYNTHESIS))
  assert got["entropy_parameters"] == pytest.approx(kmac(channel + params))
  assert got["context"] == pytest.approx(kmac(context))
  assert got["lrp"] == pytest.approx(kmac(lrp))

  # autoregressive (M = 40): rows above 2x5 taps 40->80 at every position, plus folding the two
  # left taps into g_ep's first layer once ([80, 80] x [80, 120]); g_ep: hyper 40->120 and
  # row context 80->120 at every position, the folded left taps 80->120 per position, then
  # 120->80->80.
  got = decode_kmac_per_pixel(tiny("autoregressive"), height=64, width=128)
  assert got["context"] == pytest.approx(kmac(LATENT * 10 * 40 * 80 + 80 * 80 * 120))
  assert got["entropy_parameters"] == pytest.approx(
    kmac(LATENT * (40 * 120 + 80 * 120 + 80 * 120 + 120 * 80 + 80 * 80))
  )
  assert got["lrp"] == pytest.approx(kmac(slice_transform(40, 40)))
  assert got["total"] == pytest.approx(
    sum(got[s] for s in ("hyper_synthesis", "context", "entropy_parameters", "lrp", "synthesis"))
  )


def profiler_macs(fn, *specs):
  """MACs of the convolutions and matrix products in ``fn``'s graph, counted by TensorFlow's
  own profiler (its registered flops statistics, 2 per MAC)."""
  import tensorflow as tf
  from tensorflow.python.profiler import model_analyzer, option_builder

  graph = tf.function(fn).get_concrete_function(*specs).graph
  options = option_builder.ProfileOptionBuilder.float_operation()
  options["account_type_regexes"] = ["Conv2D", "Conv2DBackpropInput", "MatMul", "BatchMatMulV2"]
  options["output"] = "none"
  return model_analyzer.profile(graph, options=options).total_float_ops // 2


@pytest.mark.parametrize("entropy", ["hyperprior", "checkerboard", "charm", "charm_checkerboard"])
def test_counts_agree_with_tensorflows_profiler(entropy):
  # The shape-based count (kept because the profiler counts a while-loop body once, so it cannot
  # count the autoregressive decoder, and needs a graph traced per stage and size) against
  # TensorFlow's profiler on the traced graphs of the same stages: the entropy model's compress
  # (hyper-synthesis, context, entropy parameters, LRP: the decoder's work) and the synthesis.
  import tensorflow as tf

  model = tiny(entropy)
  model.build_coders()
  model.set_memory_budget(0)  # the networks on the whole latent, not in the bands' while loop
  got = decode_kmac_per_pixel(model, height=64, width=128)
  entropy_stages = sum(got[s] for s in ("hyper_synthesis", "context", "entropy_parameters", "lrp"))
  latent, z = tf.TensorSpec([1, 4, 8, 40]), tf.TensorSpec([1, 1, 2, 16])
  assert profiler_macs(model.entropy_model.compress, latent, z) == round(
    entropy_stages * PIXELS * 1e3
  )
  assert profiler_macs(model.synthesis, latent) == round(got["synthesis"] * PIXELS * 1e3)

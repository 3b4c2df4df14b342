"""Learning-rate schedules from ``conf/schedule/``.

A schedule is piecewise constant: ``rates[i]`` up to the i-th boundary, where boundaries are
*fractions* of the run's steps, so a short run has the shape of the paper's 2M steps; ``scale``
multiplies every rate (a single number for learning-rate searches).
"""

from cbexp.errors import CbexpError


class ScheduleError(CbexpError, ValueError):
  """A schedule whose boundaries and rates do not fit together."""


def first_steps(boundaries, total_steps):
  """0-based step at which each value after the first starts."""
  return [int(round(float(f) * total_steps)) for f in boundaries]


def check(boundaries, rates):
  boundaries, rates = list(boundaries), list(rates)
  if len(rates) != len(boundaries) + 1:
    raise ScheduleError(
      f"schedule: {len(boundaries)} boundaries need {len(boundaries) + 1} rates, got {len(rates)}"
    )
  if any(not 0.0 < float(f) <= 1.0 for f in boundaries) or boundaries != sorted(boundaries):
    raise ScheduleError(
      f"schedule: boundaries must be increasing fractions of the steps in (0, 1], got {boundaries}"
    )
  if any(float(r) <= 0 for r in rates):
    raise ScheduleError(f"schedule: learning rates must be positive, got {rates}")


def learning_rate_schedule(schedule_cfg, total_steps):
  """-> a Keras LearningRateSchedule of the optimizer step (``optimizer.iterations``)."""
  import tensorflow as tf

  scale = float(schedule_cfg.get("scale", 1.0))
  boundaries = list(schedule_cfg.boundaries)
  rates = [scale * float(r) for r in schedule_cfg.rates]
  check(boundaries, rates)
  if not boundaries:
    return tf.keras.optimizers.schedules.PiecewiseConstantDecay([total_steps], rates * 2)
  # PiecewiseConstantDecay uses rates[i] while step <= boundary[i], hence the -1.
  return tf.keras.optimizers.schedules.PiecewiseConstantDecay(
    [s - 1 for s in first_steps(boundaries, total_steps)], rates
  )

"""The learning rate the optimizer actually applies at the schedule's boundary steps."""

import pytest
import tensorflow as tf

from cbexp.config import compose
from cbexp.training.schedules import learning_rate_schedule


def applied_learning_rate(optimizer, variable, step):
  """Runs one optimizer update at ``step`` and returns the learning rate it used."""
  optimizer.iterations.assign(step)
  optimizer.apply_gradients([(tf.zeros_like(variable), variable)])
  return float(optimizer.learning_rate)


@pytest.mark.parametrize("total_steps,switch", [(2_000_000, 1_800_000), (1000, 900), (30, 27)])
def test_paper_schedule_switches_for_the_last_tenth(total_steps, switch):
  cfg = compose(["schedule=paper"])
  optimizer = tf.keras.optimizers.Adam(learning_rate_schedule(cfg.schedule, total_steps))
  variable = tf.Variable(1.0)
  expected = {0: 1e-4, switch - 1: 1e-4, switch: 1e-5, switch + 1: 1e-5, total_steps - 1: 1e-5}
  for step, rate in expected.items():
    assert applied_learning_rate(optimizer, variable, step) == pytest.approx(rate), step


def test_constant_schedule():
  cfg = compose(["schedule=constant", "schedule.rates=[3e-4]"])
  optimizer = tf.keras.optimizers.Adam(learning_rate_schedule(cfg.schedule, 100))
  variable = tf.Variable(1.0)
  for step in (0, 50, 99, 150):
    assert applied_learning_rate(optimizer, variable, step) == pytest.approx(3e-4)

"""Training progress: tqdm's bar in a terminal, else log lines (``ProgressLog``) that a batch
job's log and the run directory's run.log keep.
"""

import datetime
import logging
import sys
import time

# The training command's messages, under one logger name in run.log whichever module writes them.
log = logging.getLogger("cbexp.run")
# Seconds between progress lines when stderr is not a terminal.
PROGRESS_SECONDS = 30.0


def progress_bar(total, start):
  """tqdm's bar on a terminal, else a ProgressLog: the same interface for the training loop."""
  if sys.stderr.isatty():
    from tqdm import tqdm

    return tqdm(
      total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0
    )
  return ProgressLog(total, start)


class ProgressLog:
  """Training progress as log lines (stderr and run.log) when stderr is not a terminal (a batch
  job, a log file): every ``interval`` seconds and at the end, with the rate and ETA measured
  from the end of this process's first step, which includes TensorFlow's graph tracing. The
  part of tqdm's interface the loop uses; tqdm itself draws the bar in a terminal."""

  def __init__(self, total, start, interval=PROGRESS_SECONDS):
    self.total, self.done, self.interval = total, start, interval
    self.first_done = self.first_time = None
    self.last_report, self.postfix = time.monotonic(), {}

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    if exc_info[0] is None and self.done == self.total:
      self.report()

  def set_postfix(self, refresh=False, **values):
    self.postfix = values

  def update(self, steps=1):
    self.done += steps
    now = time.monotonic()
    if self.first_time is None:  # the first step traces the graph: not part of the rate
      self.first_done, self.first_time = self.done, now
      self.last_report = now
    elif now - self.last_report >= self.interval:
      self.report(now)

  def report(self, now=None):
    now = time.monotonic() if now is None else now
    self.last_report = now
    line = f"train step {self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"
    if self.first_time is not None and self.done > self.first_done:
      rate = (self.done - self.first_done) / (now - self.first_time)
      eta = datetime.timedelta(seconds=round((self.total - self.done) / rate))
      line += f", {rate:.2f} steps/s, ETA {eta}"
    if self.postfix:
      line += "; " + ", ".join(f"{k} {v}" for k, v in self.postfix.items())
    log.info(line)

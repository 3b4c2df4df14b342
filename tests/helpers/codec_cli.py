"""The codec command in a fresh process, its refusal contract, and a tiny model with a file it
wrote (shared by the codec tests)."""

import os
import re
import resource
import subprocess
import sys

from cbexp.errors import USER_ERROR


def run_codec(*args, cwd, module="cbexp.codec", address_space=None, timeout=900, env=None):
  """``python -m module args`` in ``cwd``; ``address_space``: its RLIMIT_AS in bytes; ``env``:
  variables set for it (over this process's environment). A command that has not exited after
  ``timeout`` seconds fails the test (subprocess.TimeoutExpired)."""
  # TF_CPP_MIN_LOG_LEVEL=0: the command itself must keep TensorFlow's logs off stderr.
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "MALLOC_ARENA_MAX": "2", **(env or {})}
  env.pop("CBEXP_DEBUG", None)

  def limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

  return subprocess.run(
    [sys.executable, "-m", module, *map(str, args)],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    preexec_fn=limit_address_space if address_space else None,
  )


def assert_refused(result, output, message):
  """Exit status 2 (a user error), exactly one line on stderr naming the problem, no traceback,
  no output (nor a temporary file beside it)."""
  assert result.returncode == USER_ERROR, (result.returncode, result.stderr)
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr
  assert "Traceback" not in result.stderr
  assert re.search(message, lines[0]), lines[0]
  assert not output.exists()
  assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}")]

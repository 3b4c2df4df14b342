"""Facts about the machine and the TensorFlow process that a measurement depends on, recorded
with every benchmark and conformance result: the CPU (read once from /proc/cpuinfo), its
bfloat16 hardware, threads, oneDNN, versions and load.
"""

import functools
import os
import pathlib
import platform


@functools.lru_cache(maxsize=None)
def cpu_facts():
  """-> (CPU model name, frozenset of CPU flags) of the first processor in /proc/cpuinfo, read
  once (elsewhere: the platform's processor name, no flags)."""
  name, flags = None, None
  try:
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    lines = []
  for line in lines:
    key, _, value = line.partition(":")
    if key.strip() == "model name" and name is None:
      name = value.strip()
    elif key.strip() == "flags" and flags is None:
      flags = frozenset(value.split())
  return name or platform.processor() or "unknown", flags or frozenset()


def worker_info():
  """The TensorFlow process's own settings: the CPUs it may run on, intra-op threads and the GPUs
  it sees."""
  import tensorflow as tf

  return {
    "cpus_available": len(os.sched_getaffinity(0)),
    "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
    "gpus_visible": len(tf.config.list_physical_devices("GPU")),
  }


def machine_info():
  """{fact: value} of this machine and process, for a results table."""
  from importlib.metadata import version

  import tensorflow as tf

  cpu, flags = cpu_facts()
  return {
    "cpu": cpu,
    "cpus_available": len(os.sched_getaffinity(0)),
    # bfloat16 matrix hardware: AVX512-BF16 doubles float32's multiply rate at best;
    # AMX tiles (Sapphire Rapids and later) give far more.
    "cpu_avx512_bf16": "avx512_bf16" in flags,
    "cpu_amx_bf16": "amx_bf16" in flags,
    "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
    "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
    "tf_version": tf.__version__,
    "tfc_version": version("tensorflow-compression"),
    "load_average_1min": os.getloadavg()[0],
  }


def gpu_visible():
  import tensorflow as tf

  return bool(tf.config.list_physical_devices("GPU"))

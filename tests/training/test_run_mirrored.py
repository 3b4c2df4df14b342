"""trainer.strategy=mirrored on two logical CPU devices (configured before TensorFlow
initializes, hence a subprocess): the run trains on 2 replicas and finishes."""

import math
import subprocess
import sys
import textwrap

from helpers.runs import environment, experiment_runs, tiny_run_overrides

SPLIT_CPU_AND_RUN = textwrap.dedent("""
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    assert len(tf.config.list_logical_devices("CPU")) == 2
    sys.argv = ["cbexp.run"] + sys.argv[1:]
    from cbexp.cli.train import main
    main()
""")


def test_mirrored_strategy_trains_on_two_cpu_replicas(tmp_path):
  arguments = tiny_run_overrides(tmp_path, steps=4) + ["trainer.strategy=mirrored"]
  result = subprocess.run(
    [sys.executable, "-c", SPLIT_CPU_AND_RUN, *arguments],
    cwd=tmp_path,
    env=environment(),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  client, (run,) = experiment_runs(f"sqlite:///{tmp_path}/mlflow.db")
  assert run.data.tags["replicas"] == "2" and run.data.params["trainer.strategy"] == "mirrored"
  assert run.info.status == "FINISHED"
  losses = client.get_metric_history(run.info.run_id, "train/loss")
  assert sorted(m.step for m in losses) == [2, 4] and all(math.isfinite(m.value) for m in losses)
  assert math.isfinite(run.data.metrics["eval/psnr"])

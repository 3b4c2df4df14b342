"""A single-node Slurm cluster for the tests, started and stopped by the test itself: munged,
slurmctld and slurmd (Debian's ``slurm-wlm`` and ``munge``) in a folder of their own, with a
slurm.conf generated for this host (its CPUs and memory, no GPU) and its own munge socket and
ports. Commands reach it through ``SLURM_CONF``.
"""

import os
import pathlib
import shutil
import socket
import subprocess
import time

DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "cbexp"
MAX_TIME_MIN = 60  # a job asking for more pends with Reason=PartitionTimeLimit


def missing():
  """Why no cluster can be started here (one line), or None."""
  if os.geteuid() != 0:
    return "Slurm daemons need root (CI runs as root)"
  for program in (*DAEMONS, "sbatch", "squeue", "sinfo", "scontrol"):
    if not shutil.which(program) and not os.path.exists(f"/usr/sbin/{program}"):
      return f"{program} is not installed (apt-get install slurm-wlm munge)"
  return None


def _program(name):
  return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _memory_mb():
  return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)


class Cluster:
  """The daemons of one single-node cluster in ``folder``; ``env`` for the commands."""

  def __init__(self, folder, accounting=None):
    self.folder = pathlib.Path(folder)
    self.processes = []
    self.node = socket.gethostname().split(".")[0]
    self.cpus = os.cpu_count()
    self.memory_mb = _memory_mb()
    self.accounting = accounting

  def write_config(self):
    folder = self.folder
    for sub in ("state", "spool", "log", "munge"):
      (folder / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(folder / "munge", 0o700)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    self.socket = folder / "munge" / "munge.socket"
    lines = [
      "ClusterName=cbexptest",
      f"SlurmctldHost={self.node}",
      "SlurmUser=root",
      "SlurmdUser=root",
      "AuthType=auth/munge",
      "CredType=cred/munge",
      f"AuthInfo=socket={self.socket}",
      f"SlurmctldPort={_free_port()}",
      f"SlurmdPort={_free_port()}",
      f"StateSaveLocation={folder / 'state'}",
      f"SlurmdSpoolDir={folder / 'spool'}",
      f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
      f"SlurmdPidFile={folder / 'slurmd.pid'}",
      f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
      f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
      "ProctrackType=proctrack/linuxproc",
      "TaskPlugin=task/none",
      "MpiDefault=none",
      "SchedulerType=sched/backfill",
      "SelectType=select/cons_tres",
      "SelectTypeParameters=CR_CPU_Memory",
      "ReturnToService=2",
      "JobAcctGatherType=jobacct_gather/none",
      "AccountingStorageType=accounting_storage/none",
      "SchedulerParameters=sched_interval=2",
      "MessageTimeout=30",
      "SlurmdTimeout=300",
      f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} "
      "State=UNKNOWN",
      f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime={MAX_TIME_MIN} State=UP",
    ]
    self.conf = folder / "slurm.conf"
    self.conf.write_text("\n".join(lines) + "\n")
    self.env = dict(os.environ, SLURM_CONF=str(self.conf))

  def start(self, timeout=60):
    self.write_config()
    log = open(self.folder / "log" / "daemons.out", "w")
    munge = self.folder / "munge"
    self._spawn(
      [
        _program("munged"),
        "-F",
        "--force",
        f"--socket={self.socket}",
        f"--key-file={munge / 'munge.key'}",
        f"--pid-file={munge / 'munged.pid'}",
        f"--log-file={munge / 'munged.log'}",
        f"--seed-file={munge / 'munged.seed'}",
      ],
      log,
    )
    self._wait_for(lambda: self.socket.exists(), timeout, "munged")
    self._spawn([_program("slurmctld"), "-D", "-i"], log)
    self._wait_for(lambda: self._ok(["scontrol", "ping"], "UP"), timeout, "slurmctld")
    self._spawn([_program("slurmd"), "-D"], log)
    self._wait_for(lambda: self._ok(["sinfo", "-h", "-o", "%T"], "idle"), timeout, "slurmd")

  def _spawn(self, argv, log):
    self.processes.append(
      subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
    )

  def _ok(self, argv, needle):
    result = subprocess.run(argv, env=self.env, capture_output=True, text=True)
    return result.returncode == 0 and needle in result.stdout

  def _wait_for(self, ready, timeout, name):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if any(p.poll() is not None for p in self.processes):
        break
      if ready():
        return
      time.sleep(0.5)
    raise RuntimeError(f"{name} did not start: {self.log_tail()}")

  def log_tail(self, lines=20):
    text = []
    for path in sorted((self.folder / "log").glob("*")) + [self.folder / "munge" / "munged.log"]:
      if path.is_file():
        text += [f"--- {path.name}"] + path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(text)

  def stop(self):
    """slurmd, slurmctld, munged: each by its PID, the next once it has gone."""
    for process in reversed(self.processes):
      if process.poll() is None:
        process.terminate()
      try:
        process.wait(timeout=20)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    self.processes = []

"""A single-node Slurm cluster for the tests, started and stopped by the test itself: munged,
slurmctld and slurmd (Debian's ``slurm-wlm`` and ``munge``) in a folder of their own, with a
slurm.conf generated for this host (its CPUs and memory, no GPU) and its own munge socket and
ports. Commands reach it through ``SLURM_CONF``.
"""

import os
import pathlib
import random
import shutil
import signal
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


def accounting_missing():
  """Why no accounting database can be started here (one line), or None."""
  for program in ("slurmdbd", "mariadbd", "mariadb-install-db", "mariadb", "sacctmgr"):
    if not shutil.which(program) and not os.path.exists(f"/usr/sbin/{program}"):
      return f"{program} is not installed (apt-get install slurmdbd mariadb-server)"
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
    self.dbd_port = _free_port()
    lines = [
      "ClusterName=cbexptest",
      # Job ids (hence the ports of multi-worker jobs, cbexp.training.distributed) apart from
      # those of another test cluster on this machine (pytest -n).
      f"FirstJobId={random.randrange(1, 9000, 10)}",
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
      *(
        [
          "AccountingStorageType=accounting_storage/slurmdbd",
          "AccountingStorageHost=localhost",
          f"AccountingStoragePort={self.dbd_port}",
          f"AccountingStoragePass={self.socket}",  # the munge socket of accounting messages
        ]
        if self.accounting
        else ["AccountingStorageType=accounting_storage/none"]
      ),
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
    if self.accounting:
      self._start_accounting(log, timeout)
    self._spawn([_program("slurmctld"), "-D", "-i"], log)
    self._wait_for(lambda: self._ok(["scontrol", "ping"], "UP"), timeout, "slurmctld")
    self._spawn([_program("slurmd"), "-D"], log)
    self._wait_for(lambda: self._ok(["sinfo", "-h", "-o", "%T"], "idle"), timeout, "slurmd")

  def _start_accounting(self, log, timeout):
    """MariaDB (a database of its own in the folder, TCP on localhost) and slurmdbd."""
    db = self.folder / "db"
    subprocess.run(
      [_program("mariadb-install-db"), f"--datadir={db}", "--user=root", "--skip-test-db"],
      stdout=log,
      stderr=subprocess.STDOUT,
      check=True,
    )
    port, db_socket = _free_port(), self.folder / "mysqld.sock"
    self._spawn(
      [
        _program("mariadbd"),
        "--no-defaults",
        f"--datadir={db}",
        "--user=root",
        f"--socket={db_socket}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        f"--pid-file={self.folder / 'mysqld.pid'}",
        "--skip-log-bin",
      ],
      log,
    )
    grant = (
      "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'cbexp'; "
      "GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';"
    )
    client = ["mariadb", "--no-defaults", f"--socket={db_socket}", "-u", "root", "-e"]
    self._wait_for(lambda: self._ok([*client, "SELECT 'up'"], "up"), timeout, "mariadbd")
    subprocess.run([*client, grant], check=True, capture_output=True)
    conf = self.folder / "slurmdbd.conf"
    conf.write_text(
      "\n".join(
        [
          "AuthType=auth/munge",
          f"AuthInfo=socket={self.socket}",
          "DbdHost=localhost",
          f"DbdPort={self.dbd_port}",
          "SlurmUser=root",
          f"PidFile={self.folder / 'slurmdbd.pid'}",
          f"LogFile={self.folder / 'log' / 'slurmdbd.log'}",
          "StorageType=accounting_storage/mysql",
          "StorageHost=127.0.0.1",
          f"StoragePort={port}",
          "StorageUser=slurm",
          "StoragePass=cbexp",
          "StorageLoc=slurm_acct_db",
        ]
      )
      + "\n"
    )
    os.chmod(conf, 0o600)
    self.env["SLURM_CONF"] = str(self.conf)
    self._spawn([_program("slurmdbd"), "-D", "-s"], log, SLURMDBD_CONF=str(conf))
    self._wait_for(lambda: self._ok(["sacctmgr", "-n", "show", "cluster"], ""), timeout, "slurmdbd")

  def _spawn(self, argv, log, **env):
    self.processes.append(
      subprocess.Popen(argv, env=dict(self.env, **env), stdout=log, stderr=subprocess.STDOUT)
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
    """The jobs (scancel), then slurmd, slurmctld, munged, each by its PID once the one before
    has gone, then whatever still carries this cluster's ``SLURM_CONF``: a job step or batch
    script that outlived its job (a stopped sweep's) would run on after the test."""
    if self.processes:
      subprocess.run(
        ["scancel", f"--partition={PARTITION}"], env=self.env, capture_output=True, timeout=60
      )
      deadline = time.monotonic() + 20
      while time.monotonic() < deadline and self._ok(["squeue", "-h", "-o", "%i"], "\n"):
        time.sleep(0.5)
    for process in reversed(self.processes):
      if process.poll() is None:
        process.terminate()
      try:
        process.wait(timeout=20)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    self.processes = []
    for pid in self._leftover_pids():
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass

  def _leftover_pids(self):
    """Processes of this machine whose environment names this cluster's slurm.conf."""
    marker = f"SLURM_CONF={self.conf}".encode() if hasattr(self, "conf") else None
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
      if marker is None or not entry.name.isdigit() or int(entry.name) == os.getpid():
        continue
      try:
        if marker in (entry / "environ").read_bytes().split(b"\0"):
          pids.append(int(entry.name))
      except OSError:
        pass
    return pids

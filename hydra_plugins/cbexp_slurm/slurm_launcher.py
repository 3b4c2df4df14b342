"""cbexp's Slurm launcher as a Hydra plugin (Hydra instantiates launchers from the
``hydra_plugins`` package only); its code is cbexp.training.slurm."""

from cbexp.training import slurm


class SlurmLauncher(slurm.SlurmLauncher):
  """hydra/launcher=slurm, slurm_cpu, slurm_multi (conf/hydra/launcher/): cbexp.training.slurm."""

"""``cbexp classical`` (``python -m cbexp.classical``): classical codecs (JPEG, WebP, AVIF,
JPEG 2000 through Pillow; JPEG XL with the jxl extra; BPG where bpgenc is on PATH) as RD points
on any images, with cbexp's own bpp, PSNR and MS-SSIM. Writes <out>/per_image.csv (reused by a
rerun: only new rows are coded), <out>/per_quality.csv and <out>/compressai/<codec>.json. The
work: cbexp.evaluation.classical and cbexp.analysis.classical.

Examples:
  python -m cbexp.classical images=kodak_test codecs=jpeg,webp,avif,jpeg2000 out=classical/kodak
  python -m cbexp.classical images=<folder> max_images=2 codecs=jpeg qualities.jpeg=[10,50,90]
"""

import sys

from omegaconf import OmegaConf

from cbexp.cli.common import HELP_FLAGS, UsageError, compose_command, run_command
from cbexp.config import CONF_DIR

PROG = "cbexp classical"


def compose(argv):
  """The command's config: its own keys (lists also as a,b), ``qualities.<codec>=[...]``."""
  grid = [a for a in argv if a.startswith("qualities.")]
  cfg, others = compose_command("classical", [a for a in argv if a not in grid])
  if others:
    raise UsageError(f"unknown argument {others[0].split('=')[0]!r} (see --help)")
  grid_cfg = OmegaConf.from_dotlist(grid)
  unknown = [name for name in grid_cfg.get("qualities", {}) if name not in cfg.qualities]
  if unknown:
    raise UsageError(f"qualities.{unknown[0]}: no such codec; known: {', '.join(cfg.qualities)}")
  return OmegaConf.merge(cfg, grid_cfg)


def classical(argv):
  cfg = compose(argv)
  from cbexp.analysis.classical import run_folder

  def progress(codec, computed, reused):
    print(f"{codec.name}: {computed} coded, {reused} reused ({codec.library()})", flush=True)

  result = run_folder(cfg, progress)
  for note in result["notes"]:
    print(f"note: {note}")
  summary = result["per_quality"]
  for name, rows in summary.groupby("codec", sort=False) if len(summary) else ():
    print(
      f"{name}: {len(rows)} points, {rows['bpp'].min():.3f}-{rows['bpp'].max():.3f} bpp, "
      f"PSNR {rows['psnr'].min():.2f}-{rows['psnr'].max():.2f} dB"
    )
  print(f"wrote {', '.join(str(p) for p in result['files']) or 'nothing: no codec ran'}")


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  if set(argv) & set(HELP_FLAGS):
    keys = (CONF_DIR / "classical.yaml").read_text().strip()
    return print(f"{__doc__.strip()}\n\nKeys (key=value), conf/classical.yaml:\n{keys}") or 0
  return run_command(PROG, classical, argv)


if __name__ == "__main__":
  sys.exit(main())

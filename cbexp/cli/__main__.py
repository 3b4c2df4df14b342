"""``cbexp <command> [arguments]``: one entry point for every command (``[project.scripts]``).

Each command is a module with a ``main()``; ``python -m cbexp.<module>`` runs the same function.
Imports are lazy so that ``cbexp --help`` and a mistyped command answer before TensorFlow loads.
"""

import importlib
import sys

# command -> (module with main(), one line for ``cbexp --help``)
COMMANDS = {
  "train": ("cbexp.cli.train", "train, evaluate and log one model (Hydra; -m for sweeps)"),
  "export": ("cbexp.cli.export", "export a model as a self-contained SavedModel"),
  "codec": ("cbexp.cli.codec", "compress, decompress and evaluate images (.cbx files)"),
  "analyze": ("cbexp.cli.analyze", "RD curves, BD-rate and tables from MLflow runs (Hydra)"),
  "classical": ("cbexp.cli.classical", "JPEG, WebP, AVIF, JPEG 2000, ... as RD points (Hydra)"),
  "bench": ("cbexp.cli.bench", "decode-time benchmark per stage"),
  "memory": ("cbexp.cli.memory", "peak memory and time of the codec by image size"),
  "conformance": ("cbexp.cli.conformance", "decode across numeric environments"),
  "summary": ("cbexp.cli.summary", "parameter counts of a model config"),
  "datasets": ("cbexp.cli.datasets", "download evaluation data (Kodak)"),
}


def usage():
  width = max(map(len, COMMANDS))
  lines = [
    "usage: cbexp <command> [arguments]   (cbexp <command> --help for each)",
    "",
    "commands:",
  ]
  lines += [f"  {name:<{width}}  {doc}" for name, (_, doc) in COMMANDS.items()]
  return "\n".join(lines)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(usage())
    return
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    from cbexp.errors import USER_ERROR

    print(
      f"cbexp: error: unknown command {command!r}; one of {', '.join(COMMANDS)}", file=sys.stderr
    )
    sys.exit(USER_ERROR)
  sys.argv = [f"cbexp {command}", *rest]
  sys.exit(importlib.import_module(COMMANDS[command][0]).main())


if __name__ == "__main__":
  main()

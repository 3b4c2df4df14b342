"""``cbexp export --out DIR [--from MODEL | OVERRIDE ...]`` (``python -m cbexp.export``): a model
as a self-contained SavedModel (``cbexp.codec.savedmodel``), trained (``--from`` any model
reference) or untrained (Hydra overrides of the model config)."""

import sys

from cbexp.cli.common import UsageError, one_line_parser, run_command
from cbexp.constants import DEFAULT_MEMORY_BUDGET_MB

PROG = "cbexp export"


def export(args):
  from cbexp.codec import savedmodel
  from cbexp.load import build_untrained, load_model

  out = savedmodel.check_new_folder(args.out)
  if args.source and args.overrides:
    raise UsageError(
      f"overrides {args.overrides} cannot change a trained model (--from); export it as it is"
    )
  if args.source:
    model, cfg = load_model(args.source, args.numerics, args.tracking_uri)
  else:
    numerics = [f"entropy.numerics={args.numerics}"] if args.numerics else []
    model, cfg = build_untrained(args.overrides + numerics, args.seed)
  model.set_memory_budget(args.memory_budget)
  model.set_decode_precision(args.precision)
  module = savedmodel.save(model, cfg, out)
  print(
    f"exported {cfg.entropy.name} model (fingerprint {module.fingerprint.numpy().decode()},"
    f" {'trained, from ' + args.source if args.source else 'untrained'}) to {out}"
  )


EXAMPLES = """examples:
  cbexp export --from outputs/runs/<run>/model --out exports/charm
  cbexp export --out exports/cb_tiny entropy=checkerboard transform=tiny
An export is code (a SavedModel can hold any TensorFlow op): share model directories, load only
exports you trust.
"""


def build_parser():
  parser = one_line_parser(
    PROG,
    "Export a model (trained with --from, or untrained from config overrides) as a "
    "self-contained SavedModel.",
    EXAMPLES,
  )
  parser.add_argument(
    "overrides",
    nargs="*",
    metavar="OVERRIDE",
    help="without --from: Hydra overrides of the model config, such as "
    "entropy=checkerboard transform=tiny",
  )
  parser.add_argument(
    "--out", required=True, metavar="DIR", help="the export's folder (new, or empty)"
  )
  parser.add_argument(
    "--from",
    dest="source",
    metavar="MODEL",
    help="a trained model: a model directory, runs:/<mlflow run id> or "
    "models:/<registered name>/<version>",
  )
  parser.add_argument(
    "--tracking-uri",
    help="MLflow tracking URI for runs:/ and models:/ "
    "(default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)",
  )
  parser.add_argument("--seed", type=int, help="random seed for an untrained model's weights")
  parser.add_argument(
    "--memory-budget",
    type=float,
    default=DEFAULT_MEMORY_BUDGET_MB,
    metavar="MB",
    help="memory for the analysis's or the synthesis's activations, baked into the export's "
    f"tiles (default {DEFAULT_MEMORY_BUDGET_MB}; 0: untiled); the strings do not depend on it",
  )
  parser.add_argument(
    "--precision",
    choices=("float32", "bfloat16"),
    default="float32",
    help="decoding precision baked into the export: bfloat16 runs the "
    "synthesis, and the LRP where safe, in bfloat16; same streams",
  )
  parser.add_argument(
    "--numerics",
    choices=("float", "exact"),
    help="entropy-parameter numerics: exact computes means and scale indexes "
    "in integer arithmetic, the same bits on every machine, so the same "
    "decoded symbols (the synthesis stays float: the image may differ by "
    "one level in a few pixels) (default: the model's own)",
  )
  return parser


def main(argv=None):
  args = build_parser().parse_intermixed_args(argv)
  return run_command(PROG, export, args)


if __name__ == "__main__":
  sys.exit(main())

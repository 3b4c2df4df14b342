"""mkdocs hook: the command-line reference (docs/reference/cli.md) from every command's ``--help``.

At build time it runs ``python -m cbexp.cli <command> --help`` for each command of
``cbexp.cli.__main__.COMMANDS`` (and for each argparse subcommand a command lists), and puts the
output where the page says ``<!-- cli-reference -->``. So the page is what the installed code
prints and cannot drift from it. A command whose help fails does not fail the build: its exit
status and stderr go into the page in a marked block, and the build log names it.
"""

import concurrent.futures
import logging
import os
import pathlib
import re
import subprocess
import sys

PAGE = "reference/cli.md"
MARKER = "<!-- cli-reference -->"
TIMEOUT_S = 300
# argparse lists subcommands on their own line under "positional arguments": "  {a,b,c}"
SUBCOMMANDS = re.compile(r"^\s+\{([\w,-]+)\}\s*$", re.MULTILINE)

log = logging.getLogger("mkdocs.hooks.cli_reference")


def run_help(root, words):
  """-> (exit status, stdout, stderr) of ``python -m cbexp.cli <words> --help``."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", COLUMNS="100")
  command = [sys.executable, "-m", "cbexp.cli", *words, "--help"]
  try:
    done = subprocess.run(
      command, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
  except (OSError, subprocess.TimeoutExpired) as e:
    return None, "", f"{type(e).__name__}: {e}"
  return done.returncode, done.stdout, done.stderr


def fenced(text, indent=""):
  """Text in a fence longer than any run of backticks inside it."""
  longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
  fence = "`" * max(3, longest + 1)
  body = "\n".join(indent + line if line else "" for line in text.rstrip().splitlines())
  return f"{indent}{fence}text\n{body}\n{indent}{fence}"


def section(words, result, level, doc=None):
  """Markdown for one command's help, or a marked block when it failed."""
  status, out, err = result
  name = "cbexp " + " ".join(words)
  lines = [f"{'#' * level} `{name}`", ""] + ([doc, ""] if doc else [])
  if status == 0:
    return lines + [fenced(out or err), ""]
  why = "did not finish" if status is None else f"exited with status {status}"
  lines += [f'!!! failure "`{name} --help` {why} when this page was built"', ""]
  lines += [fenced((err or out or "(no output)")[-6000:], indent="    "), ""]
  return lines


def subcommands(help_text):
  found = SUBCOMMANDS.search(help_text or "")
  return found.group(1).split(",") if found else []


def reference(root, commands):
  """The generated Markdown for every command and its subcommands, and the names that failed."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    tops = dict(zip(commands, pool.map(lambda c: run_help(root, [c]), commands)))
    subs = [(c, s) for c in commands if tops[c][0] == 0 for s in subcommands(tops[c][1])]
    nested = dict(zip(subs, pool.map(lambda cs: run_help(root, list(cs)), subs)))
  lines, failed = [], []
  for command, (_, doc) in commands.items():
    lines += section([command], tops[command], 2, doc[:1].upper() + doc[1:] + ".")
    failed += [command] if tops[command][0] != 0 else []
    for (parent, sub), result in nested.items():
      if parent == command:
        lines += section([command, sub], result, 3)
        failed += [f"{command} {sub}"] if result[0] != 0 else []
  return "\n".join(lines), failed


def on_page_markdown(markdown, page, config, files):
  if page.file.src_uri != PAGE or MARKER not in markdown:
    return markdown
  root = pathlib.Path(config.config_file_path).resolve().parent
  sys.path.insert(0, str(root))
  try:
    from cbexp.cli.__main__ import COMMANDS
  except Exception as e:  # the package itself does not import: say so on the page
    text = f"{type(e).__name__}: {e}"
    log.info("cli reference: cbexp.cli.__main__ does not import (%s)", text)
    block = '!!! failure "`cbexp.cli.__main__` did not import when this page was built"'
    return markdown.replace(MARKER, f"{block}\n\n{fenced(text, indent='    ')}\n")
  finally:
    sys.path.remove(str(root))
  generated, failed = reference(root, COMMANDS)
  if failed:
    log.info("cli reference: --help failed for %s (shown on the page)", ", ".join(failed))
  return markdown.replace(MARKER, generated)

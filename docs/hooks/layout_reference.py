"""mkdocs hook: the package tree and the import layers in docs/development/layout.md.

At build time it lists every module of ``cbexp/`` with the first sentence of its docstring (read
with ``ast``: nothing is imported) where the page says ``<!-- package-tree -->``, and the layers of
``[tool.importlinter]`` in pyproject.toml where it says ``<!-- import-layers -->``. A module that
moves, or a layer that changes, changes the page with it.
"""

import ast
import pathlib
import re
import tomllib

PAGE = "development/layout.md"
TREE, LAYERS = "<!-- package-tree -->", "<!-- import-layers -->"
# a full stop after a word of four letters or more (not "et al.", "e.g."), then a new sentence
SENTENCE_END = re.compile(r"(?<=[a-z)`']{4}\.)\s+(?=[A-Z(`])")
CODE_SPAN = re.compile(r"(``.*?``|`[^`]*`)")


def summary(path):
  """The first sentence of a module's docstring, on one line ("" without one)."""
  try:
    text = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
  except SyntaxError as e:
    return f"(does not parse: {e.msg}, line {e.lineno})"
  first = " ".join(text.strip().split("\n\n")[0].split())
  sentence = SENTENCE_END.split(first, maxsplit=1)[0]
  # a table cell: escape "|" and "[" outside code spans ("[a] [b]" would read as a reference link)
  parts = CODE_SPAN.split(sentence)
  return "".join(
    p if i % 2 else p.replace("|", "\\|").replace("[", "\\[") for i, p in enumerate(parts)
  )


def tree(package):
  """One table row per module, grouped by subpackage (the top-level modules first)."""
  modules = sorted(
    (p for p in package.rglob("*.py") if "__pycache__" not in p.parts),
    key=lambda p: (len(p.relative_to(package).parts) > 1, p.relative_to(package).as_posix()),
  )
  lines = ["| module | what it is |", "|---|---|"]
  for path in modules:
    name = path.relative_to(package.parent).as_posix()
    lines.append(f"| `{name}` | {summary(path) or '-'} |")
  return "\n".join(lines)


def layers(pyproject):
  contracts = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["importlinter"]
  lines = []
  for contract in contracts.get("contracts", []):
    lines += [f"**{contract.get('name', 'contract')}** (top to bottom):", ""]
    for i, layer in enumerate(contract.get("layers", []), 1):
      names = " · ".join(f"`{name.strip()}`" for name in layer.split(":"))
      lines.append(f"{i}. {names}")
    lines.append("")
  return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
  if page.file.src_uri != PAGE:
    return markdown
  root = pathlib.Path(config.config_file_path).resolve().parent
  markdown = markdown.replace(TREE, tree(root / "cbexp"))
  return markdown.replace(LAYERS, layers(root / "pyproject.toml"))

"""The repository's guardrails, run with the tests so that CI fails when one fails: ruff (lint
and format), the import layers (import-linter, pyproject.toml), no import circle anywhere in the
package, and the documentation site built with warnings as errors."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def run(*command):
  return subprocess.run(
    [str(c) for c in command], cwd=REPO, capture_output=True, text=True, timeout=900
  )


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(check):
  result = run(BIN / "ruff", *check, ".")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_import_layers():
  result = run(BIN / "lint-imports")
  assert result.returncode == 0, result.stdout[-3000:]


def import_circles(graph, modules):
  """Strongly connected components of more than one module (Tarjan), each as a sorted list."""
  index, low, on_stack, stack, circles = {}, {}, set(), [], []

  def visit(module):
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for imported in graph.find_modules_directly_imported_by(module) & modules:
      if imported not in index:
        visit(imported)
        low[module] = min(low[module], low[imported])
      elif imported in on_stack:
        low[module] = min(low[module], index[imported])
    if low[module] == index[module]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == module:
          break
      if len(component) > 1:
        circles.append(sorted(component))

  for module in sorted(modules):
    if module not in index:
      visit(module)
  return circles


def test_no_import_circle_in_the_package():
  import grimp

  graph = grimp.build_graph("cbexp")  # every import, function-level ones included
  modules = {m for m in graph.modules if m.startswith("cbexp.") or m == "cbexp"}
  assert import_circles(graph, modules) == []


def test_import_circles_are_found():
  """The check above can fail: a constructed graph with a circle."""

  class Graph:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

    def find_modules_directly_imported_by(self, module):
      return self.edges[module]

  assert import_circles(Graph(), {"a", "b", "c", "d"}) == [["a", "b", "c"]]


def test_documentation_builds_without_warnings(tmp_path):
  result = run(BIN / "mkdocs", "build", "--strict", "--site-dir", tmp_path / "site")
  assert result.returncode == 0, result.stderr[-4000:]
  assert (tmp_path / "site" / "index.html").is_file()

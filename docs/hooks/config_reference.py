"""mkdocs hook: every file of ``cbexp/conf/`` in docs/reference/configuration.md.

The configs are the reference for their own keys: each key carries its comment in the YAML. At
build time this hook puts every file, as it is, where the page says ``<!-- config-files -->``:
first the primary configs (the top-level files), then each config group with one block per
option. A new group, option or key shows up without editing the page.
"""

import pathlib

PAGE = "reference/configuration.md"
MARKER = "<!-- config-files -->"


def yaml_block(path, title):
  text = path.read_text(encoding="utf-8").rstrip()
  return [f'```yaml title="{title}"', text, "```", ""]


def groups(conf):
  """{group path (e.g. "entropy", "hydra/launcher"): [option files]}, sorted."""
  found = {}
  for path in sorted(conf.rglob("*.yaml")):
    if path.parent != conf:
      found.setdefault(path.parent.relative_to(conf).as_posix(), []).append(path)
  return dict(sorted(found.items()))


def reference(conf):
  lines = ["## Primary configs", ""]
  for path in sorted(conf.glob("*.yaml")):
    lines += [f"### `{path.name}`", ""] + yaml_block(path, f"cbexp/conf/{path.name}")
  lines += ["## Config groups", ""]
  for group, paths in groups(conf).items():
    options = ", ".join(f"`{p.stem}`" for p in paths)
    lines += [f"### `{group}`", "", f"Options: {options}.", ""]
    for path in paths:
      lines += yaml_block(path, f"cbexp/conf/{group}/{path.name}")
  return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
  if page.file.src_uri != PAGE or MARKER not in markdown:
    return markdown
  conf = pathlib.Path(config.config_file_path).resolve().parent / "cbexp" / "conf"
  return markdown.replace(MARKER, reference(conf))

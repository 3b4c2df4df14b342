"""mkdocs hook: the committed result files, published beside the results pages that include them.

Each study's ``experiments/results/<study>/README.md`` is included into
``docs/results/<study>/index.md`` (pymdownx.snippets). Its relative links and images
(``rd_psnr.png``, ``report.md``, ``command.txt``) then resolve from ``results/<study>/``, so this
hook adds the study's other files there as they are (no copies in docs/). ``notebooks/figures/``
is published as ``results/figures/`` the same way. A file the docs folder already has wins.
"""

import pathlib

from mkdocs.structure.files import File

# repository folder -> site folder; "*" stands for each study's folder name
SOURCES = {"experiments/results/*": "results/*", "notebooks/figures": "results/figures"}


def folders(root):
  """(repository folder, site folder) pairs that exist."""
  for source, target in SOURCES.items():
    if source.endswith("/*"):
      parent = root / source[:-2]
      for folder in sorted(p for p in parent.iterdir() if p.is_dir()):
        yield folder, target.replace("*", folder.name)
    elif (root / source).is_dir():
      yield root / source, target


def on_files(files, config):
  root = pathlib.Path(config.config_file_path).resolve().parent
  for folder, target in folders(root):
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
      relative = path.relative_to(folder).as_posix()
      uri = f"{target}/{relative}"
      if relative == "README.md" or "__pycache__" in relative or files.get_file_from_path(uri):
        continue
      files.append(File.generated(config, uri, abs_src_path=str(path)))
  return files

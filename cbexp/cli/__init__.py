"""The command line: the only place with argv, exit codes and lazy imports. Each command is a
module here with a ``main``; ``cbexp <command>`` (``cbexp.cli.__main__``) dispatches to them."""

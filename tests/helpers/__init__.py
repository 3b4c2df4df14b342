"""Helpers shared by the test files (tests/ is on pytest's pythonpath: pyproject.toml)."""

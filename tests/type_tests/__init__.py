"""Type tests: checked by mypy (see ``[tool.mypy] files``), never collected by pytest."""

"""The benchmark harness (issue 6): ``python -m kdns.bench``. A development tool; the server
never imports it (an import-linter contract in pyproject.toml keeps it so)."""

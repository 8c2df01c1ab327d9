"""A module whose own import fails (tests/test_imports.py imports it)."""

import no_such_dependency_q  # noqa: F401

app = None

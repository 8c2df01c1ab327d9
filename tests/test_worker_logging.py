"""The worker CLI prints each log line once, also when the app's framework
(Django's ``LOGGING``) gives its loggers console handlers of their own."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from async_accept.cli import PrintedOnce


@pytest.fixture
def loggers() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    root_out, django_out = io.StringIO(), io.StringIO()
    root_handler = logging.StreamHandler(root_out)
    root_handler.addFilter(PrintedOnce())
    django_handler = logging.StreamHandler(django_out)
    django_handler.setLevel(logging.INFO)
    root, django = logging.getLogger(), logging.getLogger("differential_django")
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(root_handler)
    django.addHandler(django_handler)
    try:
        yield root_out, django_out
    finally:
        root.removeHandler(root_handler)
        django.removeHandler(django_handler)
        root.setLevel(old_level)


def test_a_line_a_framework_prints_is_not_printed_again(
    loggers: tuple[io.StringIO, io.StringIO],
) -> None:
    """A record a framework's own console handler prints is not printed by the worker's;
    one it doesn't print (below its level, another logger) still is."""
    root_out, django_out = loggers
    logging.getLogger("differential_django.request").warning("Not Found: /x")
    logging.getLogger("differential_django.db").debug("query")
    logging.getLogger("differential_other").warning("from the app")
    assert django_out.getvalue().count("Not Found: /x") == 1
    assert "Not Found" not in root_out.getvalue()
    assert "query" in root_out.getvalue()  # below the framework handler's level
    assert "from the app" in root_out.getvalue()

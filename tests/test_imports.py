"""One parser for "package.module:attr" options, with one error message."""

from __future__ import annotations

import pytest

from async_accept._imports import import_from_string, split_import_path
from async_accept.errors import ConfigurationError


def test_imports_dotted_attributes_after_the_colon() -> None:
    """'module:a.b' imports the module and walks the attributes."""
    assert import_from_string("os.path:join.__name__", "app") == "join"
    assert import_from_string(" os:sep ", "app") is not None


@pytest.mark.parametrize("path", ["os", "os:", ":sep", "os: sep", "", None, 3])
def test_not_a_path_names_the_option_and_the_shape(path: object) -> None:
    """Anything but 'module:attr' is refused, naming the option and the form to use."""
    with pytest.raises(ConfigurationError, match=r"executor=.* 'package\.module:attribute'"):
        split_import_path(path, "executor")


def test_missing_module_or_attribute_names_what_is_missing() -> None:
    """A missing module or attribute: ConfigurationError "can't be imported" naming it."""
    with pytest.raises(ConfigurationError, match="can't be imported: no module named 'nope_x'"):
        import_from_string("nope_x.sub:app", "celery_app")
    with pytest.raises(ConfigurationError, match="can't be imported: os has no 'NOPE'"):
        import_from_string("os:NOPE", "app")


def test_errors_of_the_imported_module_itself_propagate() -> None:
    """A module that exists but fails on import raises its own error, not a config error."""
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_q"):
        import_from_string("tests.broken_import_target:app", "app")

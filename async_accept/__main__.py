"""``python -m async_accept secret``: print a new random secret key.

::

    export ASYNC_ACCEPT_SECRET_KEY="$(python -m async_accept secret)"

Every other command is the ``async-accept`` CLI's (``python -m async_accept worker ...``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["secret"]:
        from .tokens import generate_secret

        print(generate_secret())
        return 0
    from .cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())

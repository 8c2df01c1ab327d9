"""The contract apps with completion webhooks, configured from the environment,
for real server processes.

uvicorn tests.e2e_webhook_app:asgi_app   /   gunicorn tests.e2e_webhook_app:wsgi_app
"""

from __future__ import annotations

import os
from typing import Any

from tests import apps, e2e_app


def _options() -> dict[str, Any]:
    opts = e2e_app._options()
    opts.update(
        webhook_secret=os.environ["ASYNC_ACCEPT_WEBHOOK_SECRET"],
        webhook_url=os.environ["ASYNC_ACCEPT_WEBHOOK_URL"],
        webhook_allow_private=True,  # the test's receiver is on 127.0.0.1
        webhook_dispatcher_options={"interval": 0.1},
    )
    return opts


def __getattr__(name: str) -> Any:
    if name == "asgi_app":
        app = apps.build_starlette(**_options())
    elif name == "wsgi_app":
        app = apps.build_wsgi(**_options())
    else:
        raise AttributeError(name)
    globals()[name] = app
    return app

"""The fault runs' Django app, served through Django's own ASGI handler (which speaks no
lifespan): ``uvicorn tests.faults.django_app:application``.

Configured from the environment as ``tests/faults/app.py`` is (``ASYNC_ACCEPT_STORE``,
``ASYNC_ACCEPT_EXECUTOR``, the timing options); ``POST /work`` (async view) and
``POST /work-sync`` (sync view) sleep ``?sleep=`` seconds, then append the request body
to the ledger.
"""

from __future__ import annotations

import asyncio
import time

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from async_accept import long_running
from tests.faults.app import SLA, _options, record

if not settings.configured:
    settings.configure(
        SECRET_KEY="fault-django-secret-0123456789abcdef-0123",
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["async_accept.django.AsyncAcceptMiddleware"],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        ASYNC_ACCEPT=_options(),
    )
    django.setup()


def _sleep(request: HttpRequest) -> float:
    return float(request.GET.get("sleep", "0"))


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"hello")


@long_running(sla=SLA)
async def work(request: HttpRequest) -> JsonResponse:
    job_input = request.body.decode()
    await asyncio.sleep(_sleep(request))
    record(job_input)
    return JsonResponse({"id": job_input})


@long_running(sla=SLA)
def work_sync(request: HttpRequest) -> JsonResponse:
    job_input = request.body.decode()
    time.sleep(_sleep(request))
    record(job_input)
    return JsonResponse({"id": job_input})


urlpatterns = [path("hello", hello), path("work", work), path("work-sync", work_sync)]

from django.core.asgi import get_asgi_application  # noqa: E402  (after settings)

application = get_asgi_application()

"""Views of every kind the integration discovers: function views (the mark
above or below another decorator), class-based views (the class or one
method), DRF APIViews, ``@api_view`` functions and viewsets."""

from __future__ import annotations

import json
import time
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST
from rest_framework import viewsets
from rest_framework.decorators import action, api_view
from rest_framework.response import Response
from rest_framework.views import APIView

from async_accept import current_job, long_running, report_progress
from tests import apps

#: a body no text codec would keep intact: the result must replay it byte for byte
BINARY = bytes(range(256))


def answer(view: str, request: HttpRequest, **extra: Any) -> JsonResponse:
    """What each marked view answers: its name and what it saw."""
    return JsonResponse(
        {
            "view": view,
            "method": request.method,
            "path": request.path,
            "authorization": request.headers.get("Authorization"),
            "in_job": current_job() is not None,
            **extra,
        }
    )


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"hello", content_type="text/plain", headers={"X-Plain": "1"})


@csrf_exempt
@long_running
def slow(request: HttpRequest) -> JsonResponse:
    """Marked below another decorator."""
    return answer("slow", request, body=request.body.decode("latin-1"))


@csrf_exempt
@require_POST
@long_running
def post_only(request: HttpRequest) -> JsonResponse:
    """Marked under ``require_POST``: only POST is long-running, the rest stay 405."""
    return answer("post_only", request)


@long_running
@require_http_methods(["GET", "POST", "PUT"])
@csrf_exempt
@require_http_methods(["POST", "PUT", "PATCH"])
def narrowed(request: HttpRequest) -> JsonResponse:
    """Two method limits in one chain: only what both let through is long-running."""
    return answer("narrowed", request)


@long_running(sla=30)
@csrf_exempt
def above(request: HttpRequest) -> JsonResponse:
    """Marked above another decorator."""
    return answer("above", request)


@csrf_exempt
@long_running(sla=30)
def progress(request: HttpRequest, name: str) -> HttpResponse:
    """Reports progress, waits for its gate, answers binary bytes plus the body."""
    apps.GATES.entered_event(name).set()
    report_progress(40, message="rendering", eta=5)
    assert apps.GATES.gate(name).wait(apps.HANDLER_LIMIT)
    report_progress(90, message="almost")
    return HttpResponse(
        BINARY + request.body,
        content_type="application/octet-stream",
        headers={"X-Handler": "progress"},
    )


@csrf_exempt
@long_running
def create(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"id": 42}, status=201, headers={"Location": "/things/42"})


@csrf_exempt
@long_running
def cookies(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(b"two cookies", content_type="text/plain")
    response.set_cookie("first", "1", httponly=True)
    response.set_cookie("second", "2", path="/reports")
    return response


@long_running
def guarded(request: HttpRequest) -> HttpResponse:
    """Not csrf_exempt: the replay meets CsrfViewMiddleware like any request."""
    return HttpResponse(b"never without a CSRF token")


@csrf_exempt
@long_running
def render_item(request: HttpRequest, pk: int) -> JsonResponse:
    return answer("render_item", request, pk=pk)


@csrf_exempt
@long_running
def legacy(request: HttpRequest, year: str) -> JsonResponse:
    return answer("legacy", request, year=year)


@csrf_exempt
@long_running
def localized(request: HttpRequest) -> JsonResponse:
    return answer("localized", request)


@method_decorator(csrf_exempt, name="dispatch")
class ReportView(View):
    """Only ``post`` is long-running; ``get`` answers directly."""

    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(b"a form", content_type="text/plain")

    @long_running(sla=30)
    def post(self, request: HttpRequest) -> JsonResponse:
        return answer("cbv", request, body=json.loads(request.body or b"null"))


@long_running
@method_decorator(csrf_exempt, name="dispatch")
class WholeView(View):
    """The whole class is long-running: its unsafe methods (GET serves the page)."""

    def get(self, request: HttpRequest) -> JsonResponse:
        return answer("whole", request)

    def post(self, request: HttpRequest) -> JsonResponse:
        return answer("whole", request)


class ReportAPIView(APIView):
    """DRF: ``post`` is long-running, ``get`` is not."""

    def get(self, request: Any) -> Response:
        return Response({"view": "api-get"})

    @long_running
    def post(self, request: Any) -> Response:
        time.sleep(0.01)
        return Response({"view": "api", "data": request.data}, status=200)


@api_view(["POST"])
@long_running
def api_below(request: Any) -> Response:
    return Response({"view": "api_below", "data": request.data})


@long_running
@api_view(["POST"])
def api_above(request: Any) -> Response:
    return Response({"view": "api_above", "data": request.data})


class JobViewSet(viewsets.ViewSet):
    """DRF viewset: ``create`` and the ``rerun`` action are long-running, ``list`` is not."""

    def list(self, request: Any) -> Response:
        return Response([{"view": "list"}])

    @long_running
    def create(self, request: Any) -> Response:
        return Response({"view": "viewset-create", "data": request.data}, status=201)

    def retrieve(self, request: Any, pk: str | None = None) -> Response:
        return Response({"view": "retrieve", "pk": pk})

    @action(detail=True, methods=["post"])
    @long_running
    def rerun(self, request: Any, pk: str | None = None) -> Response:
        return Response({"view": "rerun", "pk": pk})

"""The slow endpoint: ``POST /reports/`` works for about two seconds."""

from __future__ import annotations

import json
import time

from django.http import HttpRequest, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from async_accept import long_running, report_progress

PAGES = 5
SECONDS = 2.0


@method_decorator(csrf_exempt, name="dispatch")  # an API called with a bearer token
class ReportView(View):
    def get(self, request: HttpRequest) -> JsonResponse:
        """Not long-running: answers at once."""
        return JsonResponse({"post": "a JSON body with a title makes a report"})

    @long_running(sla=30)
    def post(self, request: HttpRequest) -> JsonResponse:
        """About two seconds of work, reporting progress page by page."""
        payload = json.loads(request.body or b"{}")
        title = str(payload.get("title", "untitled"))
        for page in range(1, PAGES + 1):
            time.sleep(SECONDS / PAGES)
            left = (PAGES - page) * SECONDS / PAGES
            report_progress(100 * page / PAGES, message=f"rendered page {page}/{PAGES}", eta=left)
        return JsonResponse({"title": title, "pages": PAGES, "framework": "django"})

"""The test project's URLs plus the dashboard next to the admin (``dashboard_urls``)."""

from __future__ import annotations

from typing import Any

from django.urls import include, path

from async_accept.django_admin import dashboard_urls
from tests.django_project.urls import urlpatterns as project_urls


def staff_header(request: Any) -> bool:
    """Stands in for the admin's staff check (the test project has no user database)."""
    return bool(request.headers.get("X-Staff") == "yes")


urlpatterns = [path("admin/jobs/", include(dashboard_urls(allow=staff_header))), *project_urls]

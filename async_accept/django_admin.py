"""The operator dashboard beside Django's admin: ``dashboard_urls()``.

No model and no migration: the page reads the job store of the process's
front door (the one ``async_accept.django.AsyncAcceptMiddleware`` uses)::

    from async_accept.django_admin import dashboard_urls

    urlpatterns = [
        path("admin/jobs/", include(dashboard_urls())),
        path("admin/", admin.site.urls),
    ]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .django import get_front_door, to_django
from .django_auth import capture

__all__ = ["dashboard_urls"]


def _is_staff(request: Any) -> bool:
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def dashboard_urls(allow: Callable[[Any], bool] | None = None) -> list[Any]:
    """URL patterns serving the operator dashboard where Django operators look,
    next to the admin. No model and no migration: the page reads the job store::

        urlpatterns = [
            path("admin/jobs/", include(dashboard_urls())),
            path("admin/", admin.site.urls),
        ]

    ``allow(request)`` decides who may use it (default: an active staff user, as
    the admin does; ``django.contrib.auth`` must be installed for that); others
    get the admin's login redirect when ``django.contrib.admin`` is installed,
    else ``403``. Its forms carry the dashboard's own CSRF token (bound to its
    session cookie), so the view is exempt from Django's.
    """
    from django.http import HttpResponseForbidden
    from django.urls import re_path
    from django.views.decorators.csrf import csrf_exempt

    from .dashboard import Guard, serve_dashboard

    check = allow or _is_staff
    anyone = Guard(check=lambda headers: True)  # the Django check below decided

    def dashboard(request: Any, rest: str = "") -> Any:
        if not check(request):
            return _login_redirect(request) or HttpResponseForbidden()
        door = get_front_door()
        if not door._discovered:
            door.discover()  # the routes the page lists
        path: str = request.path_info
        mount = path[: len(path) - len(rest)].rstrip("/")
        body: bytes = request.body if request.method == "POST" else b""
        gen = serve_dashboard(
            door.engine,
            capture(request, path, body),
            door.runtime.observer.dispatcher,
            anyone,
            mount=mount,
            feed=door.runtime.feed,
            routes=door.marked_routes,
        )
        return to_django(door.runtime.drive(gen), request.method)

    return [re_path(r"^(?P<rest>.*)$", csrf_exempt(dashboard), name="async_accept_dashboard")]


def _login_redirect(request: Any) -> Any:
    from django.apps import apps as django_apps

    if not django_apps.is_installed("django.contrib.admin"):
        return None
    from django.contrib.auth.views import redirect_to_login
    from django.urls import reverse

    return redirect_to_login(request.get_full_path(), reverse("admin:login"))

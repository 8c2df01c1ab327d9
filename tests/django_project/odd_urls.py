"""Unusual URL patterns discovery must match exactly as Django does (not served)."""

from __future__ import annotations

from django.urls import include, path, re_path

from tests.django_project import views

inner = [
    re_path(r"^(?P<pk>[0-9]+)/$", views.slow),  # the same group name as its include
]

urlpatterns = [
    re_path(r"(?i)^caps/$", views.slow),  # inline flags
    re_path(r"open/(?P<n>[0-9]+)", views.slow),  # no anchors: Django searches
    re_path(r"^nested/(?P<pk>[a-z]+)/", include(inner)),
    path("p/<slug:s>/<uuid:u>/", views.slow),
]

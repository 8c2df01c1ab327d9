"""URLs of the example project."""

from __future__ import annotations

from django.urls import path

from examples.django_app.api import SnippetList
from examples.django_app.views import ReportView

urlpatterns = [
    path("reports/", ReportView.as_view()),
    path("api/snippets/", SnippetList.as_view()),
]

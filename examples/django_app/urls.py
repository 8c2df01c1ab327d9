"""URLs of the example project."""

from __future__ import annotations

from django.urls import path

from examples.django_app.views import ReportView

urlpatterns = [
    path("reports/", ReportView.as_view()),
]

"""DRF routes, included under ``api/``."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from tests.django_project import views

router = DefaultRouter()
router.register("jobs", views.JobViewSet, basename="job")

urlpatterns = [
    path("reports/", views.ReportAPIView.as_view()),
    path("fn-below/", views.api_below),
    path("fn-above/", views.api_above),
    path("", include(router.urls)),
]

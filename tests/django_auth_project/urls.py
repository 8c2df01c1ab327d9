"""URLs of the auth test project."""

from __future__ import annotations

from django.urls import path

from tests.django_auth_project import views

urlpatterns = [
    path("hello", views.hello),
    path("login/", views.do_login),
    path("rotate/", views.rotate),
    path("work/", views.work),
    path("api/work/", views.ApiWork.as_view()),
    path("api/rotate-token/", views.rotate_token),
]

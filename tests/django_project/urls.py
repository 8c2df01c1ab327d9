"""The test project's URLconf: path() converters, re_path(), include(), i18n_patterns()."""

from __future__ import annotations

from django.conf.urls.i18n import i18n_patterns
from django.urls import include, path, re_path

from tests.django_project import views

urlpatterns = [
    path("hello/", views.hello),
    path("slow/", views.slow),
    path("above/", views.above),
    path("post-only/", views.post_only),
    path("narrowed/", views.narrowed),
    path("progress/<str:name>/", views.progress),
    path("create/", views.create),
    path("cookies/", views.cookies),
    path("guarded/", views.guarded),
    path("items/<int:pk>/render/", views.render_item),
    re_path(r"^legacy/(?P<year>[0-9]{4})/$", views.legacy),
    path("cbv/", views.ReportView.as_view()),
    path("cbv-whole/", views.WholeView.as_view()),
    path("api/", include("tests.django_project.api_urls")),
    *i18n_patterns(path("localized/", views.localized), prefix_default_language=False),
]

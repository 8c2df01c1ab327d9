"""Settings of the example project (see the package docstring for how to run it)."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-change-me-0123456789")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "examples.django_app.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "async_accept.django.AsyncAcceptMiddleware",  # <- async_accept: near the top
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

# Django REST framework without a database: JSON only, no anonymous user object.
REST_FRAMEWORK = {
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
}

# async_accept's options (all optional; the secret falls back to SECRET_KEY).
ASYNC_ACCEPT = {
    "store": os.environ.get("ASYNC_ACCEPT_STORE", "sqlite:///async_accept_jobs.db"),
}

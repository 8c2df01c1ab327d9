"""A Django project with real users (django.contrib.auth on SQLite), sessions and
DRF token/basic authentication, run under real servers by test_owner_django_auth.py."""

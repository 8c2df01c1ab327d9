"""A tiny Django project for the Django integration tests (tests/test_django.py)."""

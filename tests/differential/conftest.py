"""Django is configured the way the rest of the suite configures it (its test
project's settings); the differential URLconfs are swapped in per call."""

from __future__ import annotations

import os

import django
from django.conf import settings

if not settings.configured:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django_project.settings"
    django.setup()

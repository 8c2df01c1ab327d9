"""Create the user table (migrate) with alice and bob, each with a DRF token;
prints the tokens as JSON. Run as a script with ``AUTH_TEST_DB`` set."""

from __future__ import annotations

import json
import os


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_auth_project.settings")
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    call_command("migrate", verbosity=0, interactive=False)
    tokens = {}
    for name in ("alice", "bob"):
        user = User.objects.create_user(name, password=f"{name}-password")
        tokens[name] = Token.objects.create(user=user).key
    print(json.dumps(tokens))


if __name__ == "__main__":
    main()

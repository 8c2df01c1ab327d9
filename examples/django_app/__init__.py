"""async_accept on Django: a minimal project with one slow report endpoint.

Run it (from the repository root) under a WSGI server::

    gunicorn -w 2 -b 127.0.0.1:8000 examples.django_app.wsgi:application

or under an ASGI server::

    uvicorn examples.django_app.asgi:application --host 127.0.0.1 --port 8000 --workers 2

Then::

    curl -si -X POST 127.0.0.1:8000/reports/ -H 'Authorization: Bearer me' \\
         -H 'Content-Type: application/json' -d '{"title": "Q3"}'
    # 202 Accepted, Location: /_jobs/<token>; poll it with the same Authorization
    curl -si 127.0.0.1:8000/_jobs/<token> -H 'Authorization: Bearer me'

What the project adds for async_accept: one line in ``MIDDLEWARE`` and the
optional ``ASYNC_ACCEPT`` dict in ``settings.py``, and ``@long_running`` on the
slow view in ``views.py``. The store is SQLite, shared by the server's
worker processes: set ``ASYNC_ACCEPT_STORE`` (default
``sqlite:///async_accept_jobs.db``); ``DJANGO_SECRET_KEY`` signs the status
URLs (a development key is used when it is unset).
"""

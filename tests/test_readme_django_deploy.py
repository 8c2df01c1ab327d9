"""The README's Django several-machines commands, run as written against a fresh
``startproject``: gunicorn and uvicorn web tiers, an RQ worker, the Redis store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, Server, base_env
from tests.services import free_port, require_redis, wipe_redis_namespace

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ALICE = {"Authorization": "Bearer alice"}
README = ROOT / "README.md"

VIEWS = """
import json
import sys
import time

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from async_accept import long_running


@csrf_exempt
@long_running(sla=60)
def report(request):
    time.sleep(1)
    where = "worker" if "async-accept" in sys.argv[0] else "web"
    body = json.dumps({"title": json.loads(request.body)["title"], "ran_in": where})
    return HttpResponse(body, content_type="application/json")
"""


def readme_block(marker: str) -> str:
    """The fenced block right after ``<!-- readme-test: marker -->`` in README.md."""
    text = README.read_text(encoding="utf-8")
    found = re.search(
        rf"<!-- readme-test: {re.escape(marker)} -->\n```\w*\n(.*?)\n```", text, re.DOTALL
    )
    assert found, f"README.md has no block marked {marker!r}"
    return found.group(1)


def test_the_readme_blocks_are_there() -> None:
    """The README's Django deployment names the WSGI module under gunicorn, the ASGI
    one under uvicorn, and gives the worker DJANGO_SETTINGS_MODULE and PYTHONPATH."""
    deploy = readme_block("django-deploy")
    assert re.search(r"gunicorn .*mysite\.wsgi:application", deploy)
    assert re.search(r"uvicorn mysite\.asgi:application", deploy)
    worker = [line for line in deploy.splitlines() if "async-accept worker" in line]
    assert worker and "PYTHONPATH=" in worker[0] and "DJANGO_SETTINGS_MODULE=" in worker[0]
    assert '"store"' in readme_block("django-settings")


@pytest.fixture
def processes() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for process in started:
        process.stop()


def _poll_to_result(base: str, location: str, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(base + location, headers=ALICE, timeout=10)
        if r.status_code == 303:
            result = httpx.get(base + r.headers["location"], headers=ALICE, timeout=10)
            assert result.status_code == 200, result.text
            return result
        assert r.status_code == 200, (r.status_code, r.text)
        assert r.json()["status"] in ("queued", "processing"), r.text
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)


CELERY_APP = """
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
app = Celery("mysite")
app.config_from_object("django.conf:settings", namespace="CELERY")
"""


def _executor_line(snippet: str, executor: str) -> str:
    """The settings snippet with its RQ executor, or its commented Celery one instead."""
    if executor == "rq":
        return snippet
    lines = snippet.splitlines()
    rq = next(i for i, line in enumerate(lines) if line.strip().startswith('"executor": "rq'))
    celery = next(i for i, line in enumerate(lines) if '"executor": "celery' in line)
    lines[rq] = lines[celery].replace("# ", "", 1)
    return "\n".join(lines)


@pytest.mark.parametrize("executor", ["rq", "celery"])
def test_the_readme_django_deployment_runs_a_job(
    tmp_path: Path, processes: list[Server], executor: str
) -> None:
    """A fresh startproject with the README's settings, gunicorn.conf.py and commands
    (gunicorn, uvicorn, a worker on the Redis store: RQ, or the project's own Celery
    app) takes a job on either web tier (202), runs it on the worker and answers
    303 -> the result from the other."""
    redis_url = require_redis()
    namespace = f"aa-django-deploy-{uuid.uuid4().hex[:8]}"
    site = tmp_path / "site"
    site.mkdir()
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "mysite", str(site)], check=True
    )
    settings = site / "mysite" / "settings.py"
    snippet = _executor_line(readme_block("django-settings"), executor).replace(
        "redis://redis.internal:6379/0", redis_url
    )
    if executor == "celery":
        (site / "mysite" / "celery.py").write_text(CELERY_APP)
        snippet += f"\nCELERY_BROKER_URL = {redis_url!r}\n"
    settings.write_text(
        settings.read_text()
        + "\n"
        + snippet
        # The test's own isolation: its namespace in the shared test database, its queue.
        + "\nfrom async_accept.stores.redis import RedisStore\n"
        + f"ASYNC_ACCEPT['store'] = RedisStore.from_url(ASYNC_ACCEPT['store'], "
        f"namespace={namespace!r})\n" + f"ASYNC_ACCEPT['executor'] += '&queue={namespace}'\n"
    )
    (site / "gunicorn.conf.py").write_text(readme_block("django-gunicorn-conf") + "\n")
    (site / "mysite" / "views.py").write_text(VIEWS)
    urls = site / "mysite" / "urls.py"
    urls.write_text(
        urls.read_text().replace(
            "urlpatterns = [",
            "from mysite.views import report\n\nurlpatterns = [\n    path('report', report),",
        )
    )
    env = base_env(PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    env.pop("DJANGO_SETTINGS_MODULE", None)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=site, env=env, check=True
    )

    web: list[Server] = []
    try:
        for line in readme_block("django-deploy").splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            port = free_port()
            command = (
                line.replace("/srv/mysite", str(site))
                .replace("0.0.0.0:8000", f"127.0.0.1:{port}")
                .replace("--host 0.0.0.0 --port 8000", f"--host 127.0.0.1 --port {port}")
                .replace("-w 4", "-w 2")
                .replace("--workers 4", "--workers 2")
            )
            server = Server(["bash", "-c", command], port, env, tmp_path / f"{port}.log")
            processes.append(server)
            if "async-accept worker" in line:  # no HTTP to poll: started as is
                with server.log.open("ab") as out:
                    server.proc = subprocess.Popen(
                        server.argv,
                        cwd=ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
            else:
                web.append(server.start(ready_path="/hello", timeout=60))
        assert len(web) == 2, "the README names a gunicorn and a uvicorn web tier"

        for i, (accept, answer) in enumerate([(web[0], web[1]), (web[1], web[0])]):
            r = httpx.post(
                accept.base + "/report", json={"title": f"Q{i}"}, headers=ALICE, timeout=10
            )
            assert r.status_code == 202, (r.status_code, r.text)
            result = _poll_to_result(answer.base, r.headers["location"])
            assert result.json() == {"title": f"Q{i}", "ran_in": "worker"}
    finally:
        for process in processes:
            process.stop()
        wipe_redis_namespace(redis_url, namespace)

"""The executor contract on Celery (Redis broker, db 15), with a real ``async-accept worker``."""

from __future__ import annotations

import pytest

from async_accept.errors import ConfigurationError, MissingDependencyError
from tests.services import require_redis
from tests.test_distributed import ALICE, ExecutorContract, Setup, Web

pytestmark = pytest.mark.redis


class TestCeleryExecutor(ExecutorContract):
    """The contract, with Celery."""

    executor = "celery"

    def broker_depth(self, setup: Setup, queue: str) -> int:
        import redis

        client = redis.Redis.from_url(setup.redis_url)
        try:
            return int(client.llen(queue))  # kombu's Redis transport: one list per queue
        finally:
            client.close()

    def test_cancel_of_a_running_job_also_revokes_its_task(self, web: Web) -> None:
        """Canceling a running job also revokes its task, so copies still queued are dropped."""
        loc = web.accept("/progress/revoke")
        web.wait(loc, lambda r: r.json()["status"] == "processing")
        job_id = web.job(loc).id
        assert web.client.delete(loc, headers=ALICE).status_code == 202
        assert web.finished(loc).json()["status"] == "canceled"
        assert web.runtime.executor.flush(5)
        # celery inspect revoked, over a connection of our own (closed after).
        app = web.runtime.executor.celery
        with app.connection_for_write() as conn:
            mailbox = app.control.mailbox(conn)
            mailbox._producer_pool = None
            replies = mailbox._broadcast("revoked", reply=True, timeout=5, limit=1) or []
        assert any(job_id in ids for reply in replies for ids in reply.values()), replies


def test_app_path_and_broker_are_required_at_construction() -> None:
    """No app path, or no broker: ConfigurationError at construction naming the fix."""
    from async_accept.executors.celery import CeleryExecutor

    with pytest.raises(ConfigurationError, match=r"mysite\.asgi:application"):
        CeleryExecutor(broker_url="redis://127.0.0.1:6379/15")
    with pytest.raises(ConfigurationError, match="broker_url="):
        CeleryExecutor(app="mysite.asgi:application")
    with pytest.raises(ConfigurationError, match="not a Celery app"):
        CeleryExecutor(app="mysite.asgi:application", celery_app=object())


def test_own_celery_app_by_path_gets_the_task() -> None:
    """celery_app='module:app' is imported at construction and gets the run_job task."""
    from celery import Celery

    from async_accept.executors.celery import TASK_NAME, CeleryExecutor

    app = Celery("mine", broker="redis://127.0.0.1:6379/15", set_as_current=False)
    ex = CeleryExecutor(app="tests.e2e_app:asgi_app", celery_app=app, queue="mine")
    assert ex.celery is app
    assert TASK_NAME in app.tasks
    with pytest.raises(ConfigurationError, match="can't be imported"):
        CeleryExecutor(app="tests.e2e_app:asgi_app", celery_app="no_such_module:app")


def test_missing_celery_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without celery installed: MissingDependencyError("The Celery executor", ...)."""
    import sys

    from async_accept.executors.celery import CeleryExecutor

    monkeypatch.setitem(sys.modules, "celery", None)
    with pytest.raises(MissingDependencyError, match=r"async-accept\[celery\]") as info:
        CeleryExecutor(app="m:app", broker_url="redis://127.0.0.1:6379/15")
    assert info.value.feature == "The Celery executor"


RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def require_rabbitmq() -> str:
    """The local RabbitMQ; fails in CI and skips elsewhere when it is not answering."""
    from tests.services import IN_CI, _port_open

    if _port_open("127.0.0.1", 5672):
        return RABBITMQ_URL
    msg = "RabbitMQ is not answering on 127.0.0.1:5672. Start it with: rabbitmq-server -detached"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


class TestCeleryExecutorOnRabbitMQ(TestCeleryExecutor):
    """The contract again, with RabbitMQ as Celery's broker (the store stays in Redis)."""

    @classmethod
    def make_setup(cls) -> Setup:
        broker = require_rabbitmq()
        return Setup(cls.executor, require_redis(), broker_url=broker)

    def broker_depth(self, setup: Setup, queue: str) -> int:
        from kombu import Connection

        with Connection(setup.broker_url, connect_timeout=5) as conn:
            return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def test_the_default_celery_app_never_gives_up_on_its_broker() -> None:
    """async_accept's own Celery app retries its broker forever (no 100-attempt limit)."""
    pytest.importorskip("celery")
    from async_accept.executors.celery import default_celery_app

    app = default_celery_app("redis://127.0.0.1:1/0", "q")
    assert app.conf.broker_connection_retry_on_startup is True
    assert app.conf.broker_connection_max_retries is None

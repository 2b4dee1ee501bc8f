"""Real servers for integration tests: FerretDB, MinIO (and Kafka, Envoy where a test asks),
started once per session on free ports under a temporary folder, stopped at the end. The
shared ones start after collection, before the first test, so their start-up counts against
no test's timeout (session_servers.py).

The checkout server itself runs in-process on the session's event loop (so tests can reach
into it), except where a test needs a real process (signals): see `server_process`.
Blocking devstack calls from async tests go through `asyncio.to_thread`, so the in-process
server keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
import pytest
from miniopy_async.api import Minio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from checkout_api.checkout.v1 import checkout_pb2_grpc as pb_grpc
from checkout_server.adapters.mongo_relay_store import MongoOutboxRelayStore
from checkout_server.config import MiB, ServerSettings
from checkout_server.outbox.document import Document
from checkout_server.wiring.server import App, create_app
from devstack import FerretDB, Kafka, MinIO, free_port
from devstack._stack import LocalStack, PythonService, StackPorts
from tests.integration.runner_stack import Processes
from tests.integration.session_servers import SessionServers

# The admin token of the whole-stack server (`stack` fixture).
STACK_ADMIN_TOKEN = "stack-admin-token"
# What every server and relay of the tests signs its wake-ups with (WAKE_SECRET): the
# in-process servers through `base_settings`, the processes tests start through their
# environment, which they inherit.
TEST_WAKE_SECRET = "checkout-tests-wake-secret"


@pytest.fixture(scope="session", autouse=True)
def _wake_secret() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WAKE_SECRET", TEST_WAKE_SECRET)
        yield


# --- the session's shared servers: started before the first test (session_servers.py) -------


class _Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Stoppable)


def _start_ferretdb(base: Path) -> FerretDB:
    server = FerretDB(port=free_port(), data_dir=base / "ferretdb")
    return _started(server, lambda: server.start(60))


def _start_minio(base: Path) -> MinIO:
    server = MinIO(port=free_port(), console_port=free_port(), data_dir=base / "minio")
    return _started(server, lambda: server.start(60))


def _start_kafka(base: Path) -> Kafka:
    server = Kafka(
        port=free_port(),
        controller_port=free_port(),
        data_dir=base / "kafka",
        log_path=base / "kafka.log",
    )
    return _started(server, lambda: server.start(120))


def _start_stack(base: Path) -> LocalStack:
    stack = LocalStack(
        base / "local-stack",
        StackPorts.free(),
        app_env={
            "ADMIN_TOKEN": STACK_ADMIN_TOKEN,
            "LOG_FORMAT": "json",
            # The whole session's tests share this server and one address (Envoy's, or
            # 127.0.0.1): they stand for many clients, so the per-client rates go up.
            "LIST_RATE_PER_MINUTE": "100000",
            "REQUEST_RATE_PER_MINUTE": "100000",
            "WATCH_MAX_WATCHERS_PER_CLIENT": "4096",
            "UPLOAD_MAX_CONCURRENT_PER_CLIENT": "64",
        },
    )
    return _started(stack, stack.start)


def _started(server: S, start: Callable[[], None]) -> S:
    try:
        start()
    except BaseException:
        server.stop()
        raise
    return server


_SERVERS = pytest.StashKey[SessionServers]()


def _session_servers(config: pytest.Config) -> SessionServers:
    servers = config.stash.get(_SERVERS, None)
    if servers is None:
        # The folder the tmp_path_factory fixture would give (kept like every test's).
        base = config._tmp_path_factory.mktemp("stack")  # type: ignore[attr-defined]
        servers = SessionServers(
            {
                "ferretdb": lambda: _start_ferretdb(base),
                "minio": lambda: _start_minio(base),
                "kafka": lambda: _start_kafka(base),
                "stack": lambda: _start_stack(base),
            }
        )
        config.stash[_SERVERS] = servers
    return servers


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the shared servers the collected tests use, all at once, before the first test."""
    if session.config.option.collectonly:
        return
    servers = _session_servers(session.config)
    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    servers.start(needed & servers.names)


def pytest_sessionfinish(session: pytest.Session) -> None:
    servers = session.config.stash.get(_SERVERS, None)
    if servers is not None:
        servers.stop()


@pytest.fixture(scope="session")
def ferretdb(request: pytest.FixtureRequest) -> FerretDB:
    server: FerretDB = _session_servers(request.config).get("ferretdb")
    return server


@pytest.fixture(scope="session")
def minio(request: pytest.FixtureRequest) -> MinIO:
    server: MinIO = _session_servers(request.config).get("minio")
    return server


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> LocalStack:
    """The whole stack as `make run` starts it (server as a process, Envoy in front), on free
    ports; shared by the tests that need Envoy or a real server process."""
    server: LocalStack = _session_servers(request.config).get("stack")
    return server


@pytest.fixture(scope="session")
def base_settings(ferretdb: FerretDB, minio: MinIO) -> ServerSettings:
    return ServerSettings(
        grpc_addr="127.0.0.1:0",
        minio_endpoint=minio.endpoint,
        mongo_uri=ferretdb.uri,
        mongo_db="checkout_test",
        mongo_timeout_ms=2_000,
        upload_max_bytes=64 * MiB,
        upload_part_bytes=5 * MiB,
        shutdown_grace_s=2.0,
        shutdown_drain_s=0.0,  # stopped by the tests themselves: no clients to turn away
        health_interval_s=0.2,
        storage_abort_retry_s=60.0,
        startup_timeout_s=20.0,
        metrics_addr="",  # many servers at once: the metrics test opens its own port
        # Tests that play the relay (`relay_store`) send the watchers no wake-up: they see
        # its marks at the safety-net poll, 10 s by default (test_watch_wakeups: woken ones).
        watch_poll_interval_s=1.0,
        wake_secret=TEST_WAKE_SECRET,
        # No status topic: each test's server would read every other test's changes. The
        # tests of the topic (test_status_topic.py) give theirs one of its own.
        status_topic="",
    )


@pytest.fixture
def settings(base_settings: ServerSettings) -> ServerSettings:
    """Per-test settings: a database and buckets of its own, so tests never see each other's
    events or objects. The second allowed bucket is `other-<same suffix>`."""
    suffix = uuid.uuid4().hex[:12]
    return base_settings.replace(
        mongo_db=f"t_{suffix}",
        default_bucket=f"videos-{suffix}",
        allowed_buckets=frozenset({f"videos-{suffix}", f"other-{suffix}"}),
    )


@pytest.fixture
def bucket(settings: ServerSettings) -> str:
    return settings.default_bucket


@pytest.fixture
def other_bucket(settings: ServerSettings) -> str:
    return next(b for b in settings.allowed_buckets if b != settings.default_bucket)


@pytest.fixture
async def app(settings: ServerSettings) -> AsyncIterator[App]:
    app = await create_app(settings)
    await app.start()
    yield app
    await app.stop(grace_s=1.0)


@pytest.fixture
async def channel(app: App) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.CheckoutServiceAsyncStub:
    return pb_grpc.CheckoutServiceStub(channel)


@pytest.fixture
async def s3(minio: MinIO) -> AsyncIterator[Minio]:
    """A test-side S3 client, to check what the service stored."""
    client = Minio(minio.endpoint, access_key="minioadmin", secret_key="minioadmin", secure=False)
    yield client
    await client.close_session()  # type: ignore[no-untyped-call]


@pytest.fixture
async def mongo_database(settings: ServerSettings) -> AsyncIterator[AsyncDatabase[Document]]:
    """A test-side client of this test's database."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(settings.mongo_uri, tz_aware=True)
    yield client[settings.mongo_db]
    await client.close()


@pytest.fixture
def outbox_collection(
    settings: ServerSettings, mongo_database: AsyncDatabase[Document]
) -> AsyncCollection[Document]:
    """A test-side view of this test's outbox collection."""
    return mongo_database[settings.mongo_outbox_collection]


@pytest.fixture
def status_collection(
    settings: ServerSettings, mongo_database: AsyncDatabase[Document]
) -> AsyncCollection[Document]:
    """A test-side view of this test's status records."""
    return mongo_database[settings.mongo_status_collection]


@pytest.fixture
def relay_store(
    outbox_collection: AsyncCollection[Document], status_collection: AsyncCollection[Document]
) -> MongoOutboxRelayStore:
    """The relay's store over this test's collections, for tests that play the relay."""
    return MongoOutboxRelayStore(outbox_collection, status_collection)


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[Kafka]:
    """A broker of this test's own, so stopping it disturbs no other test."""
    server = Kafka(
        port=free_port(),
        controller_port=free_port(),
        data_dir=tmp_path / "kafka",
        log_path=tmp_path / "kafka.log",
    )
    server.start(120)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka(request: pytest.FixtureRequest) -> Kafka:
    """One Kafka broker (KRaft) for the session, on free ports; the relay's tests use it."""
    server: Kafka = _session_servers(request.config).get("kafka")
    return server


@pytest.fixture
def own_minio(tmp_path: Path) -> Iterator[MinIO]:
    """A MinIO of this test's own, so stopping it disturbs no other test."""
    server = MinIO(port=free_port(), console_port=free_port(), data_dir=tmp_path / "minio")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_ferretdb(tmp_path: Path) -> Iterator[FerretDB]:
    """A FerretDB of this test's own, so stopping it disturbs no other test."""
    server = FerretDB(port=free_port(), data_dir=tmp_path / "ferretdb")
    server.start()
    yield server
    server.stop()


# --- the detection runner's tests ---------------------------------------------------------


@pytest.fixture
def processes(settings: ServerSettings, kafka: Kafka, tmp_path: Path) -> Iterator[Processes]:
    """The relay and runner processes of a runner test (a topic and a group of its own),
    stopped after it."""
    group = Processes(settings, kafka, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
async def relay(processes: Processes) -> PythonService:
    """A relay of the test's topic, started."""
    return await asyncio.to_thread(processes.start_relay)

"""FerretDB (over PostgreSQL or SQLite), MinIO and Kafka (KRaft) as ServerProcess subclasses."""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import os
import secrets
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._install import POSTGRES_BIN, postgres_available, tool_path
from ._paths import KAFKA_LIBS_DIR, STACK_DIR
from ._process import ServerError, ServerProcess, free_port, http_status, port_open


def _require_binary(path: Path) -> str:
    if not path.is_file():
        raise ServerError(f"{path} is missing: run `python -m devstack install`")
    return str(path)


EQUALITY_INDEXES_SQL = Path(__file__).with_name("equality_indexes.sql")
POSTGRES_USER = "postgres"  # the server refuses to run as root; this user runs it then
# FerretDB's backend in the dev stack and the tests: CHECKOUT_FERRETDB_BACKEND=sqlite|postgresql.
BACKEND_VARIABLE = "CHECKOUT_FERRETDB_BACKEND"


def default_backend() -> str:
    """FerretDB's backend: CHECKOUT_FERRETDB_BACKEND if set, else PostgreSQL where it is
    installed (it updates by `_id` through an index; SQLite scans: docs/relay.md), else SQLite."""
    chosen = os.environ.get(BACKEND_VARIABLE, "").strip().lower()
    if chosen:
        if chosen not in {"sqlite", "postgresql"}:
            raise ServerError(f"{BACKEND_VARIABLE} must be sqlite or postgresql, not {chosen!r}")
        return chosen
    return "postgresql" if postgres_available() else "sqlite"


def _as_postgres_user() -> dict[str, Any]:
    """Popen arguments that run a PostgreSQL program as POSTGRES_USER when we are root."""
    if os.geteuid() != 0:
        return {}
    return {"user": POSTGRES_USER, "group": POSTGRES_USER, "extra_groups": []}


def _reachable_by_postgres(data_dir: Path) -> Path:
    """`data_dir`, or when we are root and POSTGRES_USER cannot reach it (pytest's temporary
    folders are private to root) a private folder of that user's in the temporary directory,
    removed when this process exits."""
    if os.geteuid() != 0 or all(
        p.stat().st_mode & stat.S_IXOTH for p in data_dir.resolve().parents if p.exists()
    ):
        return data_dir
    private = Path(tempfile.mkdtemp(prefix="devstack-postgresql-"))
    shutil.chown(private, POSTGRES_USER, POSTGRES_USER)
    atexit.register(shutil.rmtree, private, True)
    return private


class PostgreSQL(ServerProcess):
    """A PostgreSQL cluster of its own in ``data_dir`` (made by initdb on first start), on
    127.0.0.1 only, with trust authentication for the user ``ferretdb``: a dev-only database.
    Commits do not wait for the disk (`synchronous_commit=off`): a crash of the machine may
    lose the last moments, never corrupt the data (what the dev stack needs). Every start
    installs `equality_indexes.sql`: the GIN indexes that let FerretDB's equality filters
    read only the rows they match."""

    def __init__(self, *, port: int, data_dir: Path, log_path: Path | None = None) -> None:
        super().__init__(name="postgresql", port=port, log_path=log_path)
        self.data_dir = _reachable_by_postgres(data_dir)

    @property
    def url(self) -> str:
        return f"postgres://ferretdb@127.0.0.1:{self.port}/postgres"

    def _prepare(self) -> None:
        if not postgres_available():
            raise ServerError(
                f"PostgreSQL 15 is missing ({POSTGRES_BIN}): run `python -m devstack install`"
                f" or set {BACKEND_VARIABLE}=sqlite"
            )
        cluster = self.data_dir / "cluster"
        if (cluster / "PG_VERSION").is_file():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, POSTGRES_USER, POSTGRES_USER)
        done = subprocess.run(
            [
                str(POSTGRES_BIN / "initdb"),
                f"--pgdata={cluster}",
                "--username=ferretdb",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            check=False,
            **_as_postgres_user(),
        )
        if done.returncode != 0:
            raise ServerError(f"initdb failed:\n{done.stdout}\n{done.stderr}")

    def _command(self) -> Sequence[str]:
        argv = [
            str(POSTGRES_BIN / "postgres"),
            "-D",
            str(self.data_dir / "cluster"),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.data_dir}",
            "-c",
            "synchronous_commit=off",
        ]
        if os.geteuid() == 0:  # ServerProcess spawns directly: switch user through setpriv
            return [
                "setpriv",
                f"--reuid={POSTGRES_USER}",
                f"--regid={POSTGRES_USER}",
                "--init-groups",
                "--",
                *argv,
            ]
        return argv

    def start(self, timeout_s: float = 60) -> None:
        super().start(timeout_s)
        self.run_sql(EQUALITY_INDEXES_SQL.read_text())

    def run_sql(self, sql: str) -> str:
        """Run `sql` with psql as the user ``ferretdb``; its output (ServerError if it fails)."""
        done = subprocess.run(
            [
                str(POSTGRES_BIN / "psql"),
                "--host=127.0.0.1",
                f"--port={self.port}",
                "--username=ferretdb",
                "--dbname=postgres",
                "--no-psqlrc",
                "--quiet",
                "--tuples-only",
                "--no-align",
                "--set=ON_ERROR_STOP=1",
            ],
            input=sql,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise ServerError(f"psql failed:\n{done.stderr}")
        return done.stdout

    def _probe(self) -> bool:
        if not port_open(self.port):
            return False
        done = subprocess.run(
            [str(POSTGRES_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            check=False,
        )
        return done.returncode == 0


class FerretDB(ServerProcess):
    """FerretDB v1 over PostgreSQL (a cluster of its own in ``data_dir``, started and stopped
    with it) or SQLite (files in ``data_dir``); `backend` defaults to `default_backend()`."""

    def __init__(
        self,
        *,
        port: int,
        data_dir: Path,
        log_path: Path | None = None,
        log_level: str = "info",
        backend: str | None = None,
    ) -> None:
        super().__init__(name="ferretdb", port=port, log_path=log_path)
        self.data_dir = data_dir
        self.log_level = log_level
        self.backend = backend or default_backend()
        self.postgres: PostgreSQL | None = None
        if self.backend == "postgresql":
            pg_log = None if log_path is None else log_path.with_name("postgresql.log")
            self.postgres = PostgreSQL(
                port=free_port(), data_dir=data_dir / "postgresql", log_path=pg_log
            )

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self, timeout_s: float = 60) -> None:
        if self.postgres is not None:
            self.postgres.start(timeout_s)
        super().start(timeout_s)

    def stop(self, timeout_s: float = 15) -> None:
        super().stop(timeout_s)
        if self.postgres is not None:
            self.postgres.stop(timeout_s)

    def kill(self) -> None:
        super().kill()
        if self.postgres is not None:
            self.postgres.kill()

    def _prepare(self) -> None:
        (self.data_dir / "state").mkdir(parents=True, exist_ok=True)

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env["DO_NOT_TRACK"] = "1"
        return env

    def _backend_flags(self) -> list[str]:
        if self.postgres is not None:
            return ["--handler=postgresql", f"--postgresql-url={self.postgres.url}"]
        # the URI must name a directory, with a trailing slash
        return ["--handler=sqlite", f"--sqlite-url=file:{self.data_dir.resolve()}/"]

    def _command(self) -> Sequence[str]:
        return [
            _require_binary(tool_path("ferretdb")),
            *self._backend_flags(),
            f"--state-dir={(self.data_dir / 'state').resolve()}",
            f"--listen-addr=127.0.0.1:{self.port}",
            "--debug-addr=-",  # default 127.0.0.1:8088 would clash between instances
            "--telemetry=disable",
            f"--log-level={self.log_level}",
            "--log-format=text",
        ]

    def _probe(self) -> bool:
        if not port_open(self.port):
            return False
        from pymongo import MongoClient  # dev-only dependency, imported lazily

        client: MongoClient[dict[str, object]] = MongoClient(
            self.uri,
            directConnection=True,
            serverSelectionTimeoutMS=1000,
            connectTimeoutMS=1000,
            socketTimeoutMS=2000,
        )
        try:
            reply = client.admin.command("ping")
            return bool(reply.get("ok"))
        finally:
            client.close()


class MinIO(ServerProcess):
    """Single-drive MinIO server storing objects in ``data_dir``."""

    def __init__(
        self,
        *,
        port: int,
        console_port: int,
        data_dir: Path,
        access_key: str = "minioadmin",
        secret_key: str = "minioadmin",
        log_path: Path | None = None,
    ) -> None:
        super().__init__(name="minio", port=port, log_path=log_path)
        self.console_port = console_port
        self.data_dir = data_dir
        self.access_key = access_key
        self.secret_key = secret_key

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def _certs_dir(self) -> Path:
        # An empty certs dir of our own: the default ~/.minio/certs could switch on TLS.
        return STACK_DIR / "minio-certs"

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._certs_dir().mkdir(parents=True, exist_ok=True)

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env.update(
            {
                "MINIO_ROOT_USER": self.access_key,
                "MINIO_ROOT_PASSWORD": self.secret_key,
                "MINIO_UPDATE": "off",
                "MINIO_BROWSER": "on",
            }
        )
        return env

    def _command(self) -> Sequence[str]:
        return [
            _require_binary(tool_path("minio")),
            "server",
            str(self.data_dir.resolve()),
            "--address",
            f"127.0.0.1:{self.port}",
            "--console-address",
            f"127.0.0.1:{self.console_port}",
            "--certs-dir",
            str(self._certs_dir()),
            "--quiet",
        ]

    def _probe(self) -> bool:
        return http_status(f"{self.url}/minio/health/ready") == 200


_LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


@dataclass(frozen=True)
class KafkaAcl:
    """What one SCRAM user may do to one topic or consumer group (ALLOW, any host)."""

    user: str
    resource: str  # "topic" or "group"
    name: str  # the literal name
    operations: tuple[str, ...]  # of _ACL_OPERATIONS: "READ", "WRITE", "CREATE", "DESCRIBE"


# The Kafka protocol's codes (org.apache.kafka.common.acl / resource).
_ACL_RESOURCES = {"topic": 2, "group": 3}
_ACL_OPERATIONS = {"READ": 3, "WRITE": 4, "CREATE": 5, "DESCRIBE": 8}
_PATTERN_LITERAL = 3
_PERMISSION_ALLOW = 3


class Kafka(ServerProcess):
    """Single Kafka broker in KRaft combined mode (broker + controller, node id 1).

    ``data_dir`` holds the generated configs and the log dir; storage is formatted
    with ``kafka.tools.StorageTool`` (random cluster id) before the first start only.

    With ``scram_users`` (name -> password) the clients' listeners are SASL_PLAINTEXT with
    SCRAM-SHA-512 only, and those users (plus the broker's own, for its inter-broker
    connections and the readiness probe) are written into the metadata when the storage is
    formatted (`--add-scram`; first start only, later changes are not applied): a client
    without a valid user and password is refused. The controller listener then takes the
    broker's own user only (SASL PLAIN, on 127.0.0.1).

    With SCRAM users the broker also authorizes (StandardAuthorizer): a user may do only
    what `acls` allow it, once the broker is up (the broker's own user is the super user
    that creates them); anything else is refused (TOPIC_AUTHORIZATION_FAILED, ...).
    """

    NODE_ID = 1
    SASL_MECHANISM = "SCRAM-SHA-512"
    BROKER_USER = "broker"  # the broker's own SCRAM user (inter-broker listener)

    def __init__(
        self,
        *,
        port: int,
        controller_port: int,
        data_dir: Path,
        heap_mb: int = 512,
        log_path: Path | None = None,
        num_partitions: int = 1,
        auto_create_topics: bool = True,
        proxied_listener: tuple[int, int] | None = None,
        scram_users: Mapping[str, str] | None = None,
        acls: Sequence[KafkaAcl] = (),
    ) -> None:
        """`proxied_listener` (listen port, advertised port) adds a second listener whose
        clients are told to reach the broker at the advertised port: a proxy's (toxiproxy's)
        in front of it, so that what they send after the bootstrap goes through that proxy
        too, while clients of `port` reach the broker directly. `scram_users` turns on
        SASL_PLAINTEXT/SCRAM-SHA-512 for the clients (see the class)."""
        super().__init__(name="kafka", port=port, log_path=log_path)
        self.proxied_listener = proxied_listener
        self.scram_users = dict(scram_users or {})
        self.acls = tuple(acls)
        if self.acls and not self.scram_users:
            raise ServerError("kafka: ACLs need SCRAM users (and so an authorizer)")
        for acl in self.acls:
            if acl.user not in self.scram_users or acl.resource not in _ACL_RESOURCES:
                raise ServerError(f"kafka: ACL {acl}: an unknown user or resource")
            if not set(acl.operations) <= set(_ACL_OPERATIONS):
                raise ServerError(f"kafka: ACL {acl}: operations are of {sorted(_ACL_OPERATIONS)}")
        if self.BROKER_USER in self.scram_users:
            raise ServerError(f"kafka: the SCRAM user {self.BROKER_USER!r} is the broker's own")
        for name, password in self.scram_users.items():
            if not name or not password or any(c in name + password for c in ',=[]"\n'):
                raise ServerError(f'kafka: SCRAM user {name!r}: empty, or has one of ,=[]"')
        self._broker_password = ""  # BROKER_USER's, kept in data_dir (_prepare)
        self.controller_port = controller_port
        self.data_dir = data_dir
        self.heap_mb = heap_mb
        self.num_partitions = num_partitions
        self.auto_create_topics = auto_create_topics

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def _log_dirs(self) -> Path:
        return self.data_dir / "kraft-logs"

    @property
    def _server_properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def sasl(self) -> bool:
        """Whether clients must authenticate (SASL_PLAINTEXT, SCRAM-SHA-512)."""
        return bool(self.scram_users)

    def _listeners(self) -> dict[str, str]:
        client = "SASL_PLAINTEXT" if self.sasl else "PLAINTEXT"
        listeners = f"PLAINTEXT://127.0.0.1:{self.port}"
        advertised = f"PLAINTEXT://127.0.0.1:{self.port}"
        protocols = f"CONTROLLER:{client},PLAINTEXT:{client}"
        if self.proxied_listener is not None:
            listen_port, advertised_port = self.proxied_listener
            listeners += f",PROXIED://127.0.0.1:{listen_port}"
            advertised += f",PROXIED://127.0.0.1:{advertised_port}"
            protocols += f",PROXIED:{client}"
        return {
            "listeners": f"{listeners},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": advertised,
            "listener.security.protocol.map": protocols,
        }

    def _sasl_properties(self) -> dict[str, str]:
        """SCRAM-SHA-512 on the clients' listeners; the broker authenticates to itself
        (inter-broker listener `PLAINTEXT`, which is then SASL_PLAINTEXT) as BROKER_USER.
        The controller listener takes PLAIN with BROKER_USER only (a static user: KRaft
        controllers cannot check SCRAM): a PLAINTEXT one would take requests such as
        AlterUserScramCredentials from anyone, who could add a user and publish as it."""
        if not self.sasl:
            return {}
        mechanism = self.SASL_MECHANISM
        user, password = self.BROKER_USER, self._broker_password
        login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{user}" password="{password}";'
        )
        props = {
            "sasl.enabled.mechanisms": mechanism,
            "sasl.mechanism.inter.broker.protocol": mechanism,
            f"listener.name.plaintext.{mechanism.lower()}.sasl.jaas.config": login,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": (
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{user}" password="{password}" user_{user}="{password}";'
            ),
        }
        if self.proxied_listener is not None:
            props[f"listener.name.proxied.{mechanism.lower()}.sasl.jaas.config"] = login
        # Every user may do only what its ACLs allow; the broker's own user, everything.
        props["authorizer.class.name"] = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
        props["super.users"] = f"User:{user}"
        props["allow.everyone.if.no.acl.found"] = "false"
        return props

    def _scram_arguments(self) -> list[str]:
        """StorageTool's `--add-scram` arguments: every user's credential, the broker's too."""
        users = {self.BROKER_USER: self._broker_password, **self.scram_users} if self.sasl else {}
        arguments = []
        for name, password in users.items():
            arguments += ["--add-scram", f"{self.SASL_MECHANISM}=[name={name},password={password}]"]
        return arguments

    def _properties(self) -> str:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.NODE_ID),
            "controller.quorum.voters": f"{self.NODE_ID}@127.0.0.1:{self.controller_port}",
            **self._listeners(),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self._log_dirs.resolve()),
            "num.partitions": str(self.num_partitions),
            "auto.create.topics.enable": str(self.auto_create_topics).lower(),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a SIGKILL the restarted broker cannot register until the previous
            # incarnation's session expires (default 9 s): keep that short for tests.
            "broker.session.timeout.ms": "2500",
            "broker.heartbeat.interval.ms": "500",
            **self._sasl_properties(),
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").is_file():
            return str(Path(java_home) / "bin" / "java")
        found = shutil.which("java")
        if found is None:
            raise ServerError("java not found (need Java 17+): set JAVA_HOME or install a JRE")
        return found

    def _classpath(self) -> str:
        if not any(KAFKA_LIBS_DIR.glob("kafka_2.13-*.jar")):
            raise ServerError(
                f"no Kafka jars in {KAFKA_LIBS_DIR}: run `python -m devstack install`"
            )
        return f"{KAFKA_LIBS_DIR}/*"

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.sasl:
            # The broker's own password, made once with the storage that holds its credential.
            stored = self.data_dir / "broker-scram-password"
            if not stored.is_file():
                stored.touch(mode=0o600)
                stored.write_text(secrets.token_urlsafe(24))
            self._broker_password = stored.read_text().strip()
        self._server_properties.write_text(self._properties())
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
        if (self._log_dirs / "meta.properties").is_file():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        res = subprocess.run(
            [
                self._java(),
                "-Xmx256m",
                "-cp",
                self._classpath(),
                f"-Dlog4j2.configurationFile={(self.data_dir / 'log4j2.properties').resolve()}",
                "kafka.tools.StorageTool",
                "format",
                # One argument: a random id may start with "-", which argparse takes for an option.
                f"--cluster-id={cluster_id}",
                "-c",
                str(self._server_properties),
                "--ignore-formatted",
                *self._scram_arguments(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            raise ServerError(
                f"kafka StorageTool format failed (exit {res.returncode}):\n"
                f"{res.stdout[-3000:]}{res.stderr[-3000:]}"
            )

    def _command(self) -> Sequence[str]:
        return [
            self._java(),
            f"-Xmx{self.heap_mb}m",
            f"-Xms{min(self.heap_mb, 128)}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={(self.data_dir / 'log4j2.properties').resolve()}",
            f"-Dkafka.logs.dir={self.data_dir.resolve()}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(self._server_properties.resolve()),
        ]

    def _probe(self) -> bool:
        if self.sasl:
            login = (self.SASL_MECHANISM, self.BROKER_USER, self._broker_password)
            return kafka_broker_registered(self.port, self.NODE_ID, scram=login)
        return kafka_broker_registered(self.port, self.NODE_ID)

    def start(self, timeout_s: float = 60) -> None:
        """Start the broker and, once it is up, create its ACLs (as the broker's user)."""
        super().start(timeout_s)
        if self.acls:
            login = (self.SASL_MECHANISM, self.BROKER_USER, self._broker_password)
            create_kafka_acls(self.port, login, self.acls)


def _kafka_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def create_kafka_acls(
    port: int, login: tuple[str, str, str], acls: Sequence[KafkaAcl], timeout_s: float = 10.0
) -> None:
    """CreateAcls v1 (api key 30) on 127.0.0.1:port after a SCRAM `login` (mechanism, user,
    password) of a super user: each ACL's operations on its literal resource, for any host.
    Raises ServerError naming the first ACL the broker refused."""
    creations = [(acl, operation) for acl in acls for operation in acl.operations]
    body = struct.pack(">i", len(creations))
    for acl, operation in creations:
        body += struct.pack(">b", _ACL_RESOURCES[acl.resource]) + _kafka_string(acl.name)
        body += struct.pack(">b", _PATTERN_LITERAL) + _kafka_string(f"User:{acl.user}")
        body += _kafka_string("*") + struct.pack(
            ">bb", _ACL_OPERATIONS[operation], _PERMISSION_ALLOW
        )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        if not _scram_login(sock, *login):
            raise ServerError("kafka: the broker's user could not log in to create ACLs")
        resp = _kafka_request(sock, api_key=30, api_version=1, body=body, correlation_id=9)
    off = 4  # throttle_time_ms
    (count,) = struct.unpack_from(">i", resp, off)
    off += 4
    for acl, operation in creations[:count]:
        (error, length) = struct.unpack_from(">hh", resp, off)
        off += 4 + max(length, 0)
        if error:
            message = resp[off - max(length, 0) : off].decode(errors="replace")
            raise ServerError(f"kafka: ACL {operation} {acl} refused (error {error}): {message}")
    if count != len(creations):
        raise ServerError(f"kafka: {count} ACL results for {len(creations)} ACLs")


def _kafka_request(
    sock: socket.socket, api_key: int, api_version: int, body: bytes, correlation_id: int
) -> bytes:
    client_id = b"devstack-probe"
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    resp = _recv_exact(sock, size)
    if struct.unpack(">i", resp[:4])[0] != correlation_id:
        raise ConnectionError("kafka probe: correlation id mismatch")
    return resp[4:]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("kafka probe: connection closed")
        buf += chunk
    return bytes(buf)


def _kafka_bytes(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def _scram_login(sock: socket.socket, mechanism: str, user: str, password: str) -> bool:
    """SaslHandshake v1 and a SCRAM exchange (RFC 5802) in SaslAuthenticate v0 requests;
    True when the broker accepts the user."""
    name = mechanism.encode()
    shake = _kafka_request(
        sock, api_key=17, api_version=1, body=struct.pack(">h", len(name)) + name, correlation_id=3
    )
    if struct.unpack(">h", shake[:2])[0] != 0:
        return False
    digest = mechanism.removeprefix("SCRAM-").replace("-", "").lower()  # sha512, sha256

    def authenticate(message: bytes, correlation_id: int) -> bytes | None:
        resp = _kafka_request(
            sock,
            api_key=36,
            api_version=0,
            body=_kafka_bytes(message),
            correlation_id=correlation_id,
        )
        (error,) = struct.unpack_from(">h", resp, 0)
        (message_len,) = struct.unpack_from(">h", resp, 2)
        off = 4 + max(message_len, 0)
        (size,) = struct.unpack_from(">i", resp, off)
        return None if error else resp[off + 4 : off + 4 + size]

    nonce = secrets.token_urlsafe(18)
    first_bare = f"n={user},r={nonce}"
    server_first = authenticate(f"n,,{first_bare}".encode(), 4)
    if server_first is None:
        return False
    fields = dict(item.split("=", 1) for item in server_first.decode().split(","))
    if not fields["r"].startswith(nonce):
        return False
    salted = hashlib.pbkdf2_hmac(
        digest, password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", digest)
    final_bare = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first.decode()},{final_bare}".encode()
    signature = hmac.digest(hashlib.new(digest, client_key).digest(), auth_message, digest)
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
    return authenticate(f"{final_bare},p={proof.decode()}".encode(), 5) is not None


def kafka_broker_registered(
    port: int, node_id: int, timeout_s: float = 2.0, scram: tuple[str, str, str] | None = None
) -> bool:
    """Kafka wire-protocol readiness check on 127.0.0.1:port.

    Sends ApiVersions v0 (error_code must be 0), logs in when the listener wants SCRAM
    (`scram`: mechanism, user, password), and then Metadata v4 for no topics; ready when the
    broker lists itself (``node_id``) and a controller is elected.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        api = _kafka_request(sock, api_key=18, api_version=0, body=b"", correlation_id=1)
        if struct.unpack(">h", api[:2])[0] != 0:
            return False
        if scram is not None and not _scram_login(sock, *scram):
            return False
        # Metadata v4: topics = [] (empty array, not null), allow_auto_topic_creation = false
        meta = _kafka_request(
            sock, api_key=3, api_version=4, body=struct.pack(">ib", 0, 0), correlation_id=2
        )
        off = 4  # throttle_time_ms
        (n_brokers,) = struct.unpack_from(">i", meta, off)
        off += 4
        node_ids: list[int] = []
        for _ in range(n_brokers):
            (nid,) = struct.unpack_from(">i", meta, off)
            off += 4
            (hlen,) = struct.unpack_from(">h", meta, off)
            off += 2 + hlen + 4  # host, port
            (rlen,) = struct.unpack_from(">h", meta, off)
            off += 2 + max(rlen, 0)  # nullable rack
            node_ids.append(nid)
        (cid_len,) = struct.unpack_from(">h", meta, off)
        off += 2 + max(cid_len, 0)  # nullable cluster id
        (controller_id,) = struct.unpack_from(">i", meta, off)
        return node_id in node_ids and controller_id >= 0

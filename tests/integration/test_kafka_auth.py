"""Authenticated Kafka against a real broker: a KRaft broker of its own whose clients' listener is
SASL_PLAINTEXT with SCRAM-SHA-512 (devstack `Kafka(scram_users=..., acls=...)`), each user
allowed only its own part (the ACLs compose's kafka-acls job makes).

- The relay's publisher, built as the relay builds it (KafkaPublisher over the wiring's
  producer and admin factories, settings from the environment as `checkout-relay` reads it),
  creates the topic and publishes a record; the runner's consumer, built as the runner builds
  it from its own environment, receives it: the record goes end to end with the right users.
- A client with no credentials, or with a wrong password, is refused at connection (the
  publisher cannot start, the runner's consumer cannot join): anyone who reaches the broker
  can no longer publish records the runner acts on.
- Each user does its part only: the runner's cannot publish, the relay's cannot consume,
  neither reaches another topic or group.
- Nor can anyone make a user of their own through the controller listener: with it
  PLAINTEXT, a bare AlterUserScramCredentials request there added a user that then published
  (seen before devstack's controller listener took the broker's user only).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from checkout_runner.adapters.kafka_source import KafkaEventSource
from checkout_runner.config import RunnerSettings
from checkout_runner.domain import ConsumedRecord
from checkout_runner.errors import ConsumerUnavailable
from checkout_runner.wiring import kafka_consumer
from checkout_server.adapters.kafka_publisher import KafkaPublisher
from checkout_server.config import RelaySettings
from checkout_server.errors import PublisherUnavailable
from checkout_server.relay.ports import Message, PublishOutcome
from checkout_server.wiring.clients import events_publisher
from devstack import Kafka, KafkaAcl, free_port
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PASSWORDS = {"relay": secrets.token_urlsafe(16), "runner": secrets.token_urlsafe(16)}


@pytest.fixture
def topic() -> str:
    return f"auth-test-{uuid.uuid4().hex[:10]}"


def group_of(topic: str) -> str:
    """The runner's consumer group in these tests."""
    return f"group-{topic}"


def acls(topic: str) -> list[KafkaAcl]:
    """What compose's kafka-acls job allows, for this test's topic and group."""
    return [
        KafkaAcl("relay", "topic", topic, ("DESCRIBE", "CREATE", "WRITE")),
        KafkaAcl("runner", "topic", topic, ("DESCRIBE", "READ")),
        KafkaAcl("runner", "group", group_of(topic), ("READ",)),
    ]


@pytest.fixture
def sasl_kafka(tmp_path: Path, topic: str) -> Iterator[Kafka]:
    """A broker of this test's own that takes SCRAM-SHA-512 users `relay` and `runner` only,
    each allowed its part of `topic`."""
    server = Kafka(
        port=free_port(),
        controller_port=free_port(),
        data_dir=tmp_path / "kafka",
        log_path=tmp_path / "kafka.log",
        scram_users=PASSWORDS,
        acls=acls(topic),
    )
    server.start(120)
    yield server
    server.stop()


def env(kafka: Kafka, topic: str, **variables: str) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "KAFKA_TOPIC": topic, **variables}


def sasl_env(kafka: Kafka, topic: str, user: str, password_file: Path) -> dict[str, str]:
    """What compose gives the relay or the runner: the user, its password in a secret file."""
    return env(
        kafka,
        topic,
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_USERNAME=user,
        KAFKA_SASL_PASSWORD_FILE=str(password_file),
    )


def secret_file(tmp_path: Path, name: str, password: str) -> Path:
    path = tmp_path / f"kafka-{name}-password"
    path.write_text(password + "\n")
    return path


def relay_publisher(settings: RelaySettings) -> KafkaPublisher:
    """The relay's publisher, as wiring/relay.py builds it."""
    return events_publisher(settings, member="auth-test")


def runner_source(settings: RunnerSettings) -> KafkaEventSource:
    """The runner's event source, as its wiring builds it."""
    return KafkaEventSource(kafka_consumer(settings, member="auth-test"), settings.kafka_topic)


@pytest.fixture
async def publisher(sasl_kafka: Kafka, topic: str, tmp_path: Path) -> AsyncIterator[KafkaPublisher]:
    """The relay's publisher with the relay's user; started, so the topic exists."""
    password_file = secret_file(tmp_path, "relay", PASSWORDS["relay"])
    settings = RelaySettings.from_env(
        sasl_env(sasl_kafka, topic, "relay", password_file)
        | {"RELAY_SEND_TIMEOUT_S": "20", "KAFKA_TOPIC_PARTITIONS": "1"}
    )
    publisher = relay_publisher(settings)
    await publisher.start()
    yield publisher
    await publisher.close()


async def consume_one(source: KafkaEventSource) -> ConsumedRecord:
    """The first record the source hands out (committed)."""
    got: list[ConsumedRecord] = []

    async def received() -> bool:
        batch = await source.next_batch(max_records=10, timeout_s=0.5)
        if batch:
            await source.finish(batch, commit=True)
            got.extend(batch)
        return bool(got)

    await wait_until(received, timeout_s=60, what="the record reaches the runner's consumer")
    return got[0]


async def test_relay_and_runner_move_a_record_with_their_users(
    sasl_kafka: Kafka, publisher: KafkaPublisher, topic: str, tmp_path: Path
) -> None:
    record = Message(key=b"event-1", value=b'{"version": 1}', headers=(("event_id", b"event-1"),))
    results = await publisher.publish([record])
    assert [r.outcome for r in results] == [PublishOutcome.DELIVERED]

    password_file = secret_file(tmp_path, "runner", PASSWORDS["runner"])
    settings = RunnerSettings.from_env(
        sasl_env(sasl_kafka, topic, "runner", password_file) | {"RUNNER_GROUP_ID": group_of(topic)}
    )
    source = runner_source(settings)
    await source.start()
    try:
        received = await consume_one(source)
    finally:
        await source.stop()
    assert (received.topic, received.value) == (topic, record.value)
    assert received.headers == record.headers


# Each way in, with what aiokafka logs when the broker refuses it: a client that does not log
# in has its connection closed at its first request; a wrong user or password fails SCRAM.
@pytest.mark.parametrize(
    ("variables", "refusal"),
    [
        pytest.param({}, "closed", id="no-credentials"),
        pytest.param(
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_USERNAME": "relay",
                "KAFKA_SASL_PASSWORD": "not-the-relay-password",
            },
            "SaslAuthenticationFailed",
            id="wrong-password",
        ),
        pytest.param(
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_USERNAME": "intruder",
                "KAFKA_SASL_PASSWORD": "some-password-of-its-own",
            },
            "SaslAuthenticationFailed",
            id="unknown-user",
        ),
    ],
)
async def test_clients_without_valid_credentials_are_refused(
    sasl_kafka: Kafka,
    publisher: KafkaPublisher,
    topic: str,
    tmp_path: Path,
    variables: dict[str, str],
    refusal: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The attack: publish a record the runner would act on, and read the relay's. Every way
    in is refused at connection; the runner, with its user, sees only the relay's record."""
    relay_settings = RelaySettings.from_env(
        env(sasl_kafka, topic, **variables) | {"RELAY_SEND_TIMEOUT_S": "10"}
    )
    # The relay's publisher with these settings: the topic cannot even be looked at.
    with pytest.raises(PublisherUnavailable):
        await relay_publisher(relay_settings).start()
    # A bare producer straight to the existing topic: refused before anything is sent.
    forger = AIOKafkaProducer(
        bootstrap_servers=sasl_kafka.bootstrap,
        request_timeout_ms=10_000,
        **relay_settings.kafka_client_security(),
    )
    try:
        with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
            await forger.start()
    finally:
        await forger.stop()
    # The runner's consumer with these settings cannot join the group.
    runner_settings = RunnerSettings.from_env(
        env(sasl_kafka, topic, **variables) | {"RUNNER_GROUP_ID": f"intruders-{topic}"}
    )
    intruder = runner_source(runner_settings)
    with pytest.raises(ConsumerUnavailable):
        await intruder.start()
    await intruder.stop()
    # Refused by the broker (not a timeout, not an unreachable port), every time.
    refused = [r for r in caplog.records if r.name.startswith("aiokafka")]
    assert len(refused) >= 3
    assert all(refusal in r.getMessage() for r in refused), [r.getMessage() for r in refused]

    honest = Message(key=b"event-2", value=b'{"version": 1, "honest": true}')
    assert [r.outcome for r in await publisher.publish([honest])] == [PublishOutcome.DELIVERED]
    password_file = secret_file(tmp_path, "runner", PASSWORDS["runner"])
    runner = runner_source(
        RunnerSettings.from_env(
            sasl_env(sasl_kafka, topic, "runner", password_file)
            | {"RUNNER_GROUP_ID": group_of(topic)}
        )
    )
    await runner.start()
    try:
        assert (await consume_one(runner)).value == honest.value
        assert await runner.next_batch(max_records=10, timeout_s=1) == []
    finally:
        await runner.stop()


def login(user: str, password: str | None = None) -> dict[str, str]:
    """An aiokafka client's SCRAM login as `user` (its password in PASSWORDS by default)."""
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": user,
        "sasl_plain_password": PASSWORDS[user] if password is None else password,
    }


async def refused_to_read(reader: AIOKafkaConsumer) -> bool:
    """Whether the broker refuses `reader` (at its start, when it joins its group, or at a
    fetch) within about 10 s of fetching; it is stopped after."""
    try:
        await reader.start()
        for _ in range(10):
            await reader.getmany(timeout_ms=1000)
    except (GroupAuthorizationFailedError, TopicAuthorizationFailedError):
        return True
    finally:
        await reader.stop()
    return False


async def test_each_user_does_its_part_only(
    sasl_kafka: Kafka, publisher: KafkaPublisher, topic: str
) -> None:
    """The attack of a service that got another's password or went rogue: the runner's user
    publishes a record the runners would act on, the relay's reads the records, either
    reaches a topic or group not its own. Each is refused by the broker's ACLs."""
    assert [r.outcome for r in await publisher.publish([Message(key=b"k", value=b"relay's")])] == [
        PublishOutcome.DELIVERED
    ]
    # The runner's user publishes: refused.
    forger = AIOKafkaProducer(
        bootstrap_servers=sasl_kafka.bootstrap, request_timeout_ms=10_000, **login("runner")
    )
    await forger.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await forger.send_and_wait(topic, b"forged")
    finally:
        await forger.stop()
    # The relay's user reads the topic in a group, or the runner's user another group or
    # another topic: refused.
    for user, group, other_topic in (
        ("relay", group_of(topic), topic),
        ("runner", f"other-{topic}", topic),
        ("runner", group_of(topic), f"other-{topic}"),
    ):
        reader = AIOKafkaConsumer(
            other_topic,
            bootstrap_servers=sasl_kafka.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            request_timeout_ms=10_000,
            **login(user),
        )
        assert await refused_to_read(reader), (user, group, other_topic)


def _uvarint(n: int) -> bytes:
    out = b""
    while n > 0x7F:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])


def _compact(data: bytes) -> bytes:
    return _uvarint(len(data) + 1) + data


def alter_scram_request(user: str, password: str) -> bytes:
    """AlterUserScramCredentials v0 (api key 51), framed: upsert `user` with a SCRAM-SHA-512
    credential for `password`, as an admin client would send it (no SASL first)."""
    salt, iterations = os.urandom(16), 4096
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    upsert = _compact(user.encode()) + struct.pack(">bi", 2, iterations)  # 2: SCRAM-SHA-512
    upsert += _compact(salt) + _compact(salted) + b"\x00"
    body = _uvarint(1) + _uvarint(2) + upsert + b"\x00"  # no deletions, one upsertion
    client_id = b"intruder"
    header = struct.pack(">hhih", 51, 0, 7, len(client_id)) + client_id + b"\x00"
    return struct.pack(">i", len(header + body)) + header + body


def answer_of(port: int, request: bytes) -> bytes:
    """What the broker answers on `port` (b"" when it closes the connection instead)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if len(answer) >= 4 and len(answer) >= 4 + struct.unpack(">i", answer[:4])[0]:
                break
        return answer


async def test_nobody_adds_a_user_through_the_controller_listener(sasl_kafka: Kafka) -> None:
    """The controller listener takes requests such as AlterUserScramCredentials; without a
    login there it is closed unanswered, and the user it would have made cannot publish."""
    assert (
        answer_of(sasl_kafka.controller_port, alter_scram_request("intruder", "pw-1234567")) == b""
    )
    intruder = AIOKafkaProducer(
        bootstrap_servers=sasl_kafka.bootstrap,
        request_timeout_ms=10_000,
        **login("intruder", "pw-1234567"),
    )
    try:
        with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
            await intruder.start()
    finally:
        await intruder.stop()

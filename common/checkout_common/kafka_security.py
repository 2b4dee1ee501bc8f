"""How the relay and the runner authenticate to Kafka: one set of settings (KAFKA_SECURITY_PROTOCOL,
KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SSL_CAFILE) that both
processes' settings classes include, checked alike, and turned into the same keyword
arguments of aiokafka's clients (producer, admin client, consumer). Standard library and
pydantic only: checkout-common does not depend on aiokafka.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, BeforeValidator, model_validator
from pydantic_settings import SettingsConfigDict

from .settings import Secret


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


SecurityProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})


class KafkaSecurity(BaseModel):
    """The Kafka client security settings the relay and the runner share."""

    # SettingsConfigDict, as in the settings classes that include it
    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(use_attribute_docstrings=True)

    kafka_security_protocol: Annotated[SecurityProtocol, BeforeValidator(_upper)] = "PLAINTEXT"
    """KAFKA_SECURITY_PROTOCOL: how the relay and the runner talk to Kafka: PLAINTEXT (no
    authentication: anyone who reaches the broker may publish), SASL_PLAINTEXT (a user and
    password, SCRAM by default), SASL_SSL (the same over TLS) or SSL (TLS, no user)."""
    kafka_sasl_mechanism: Annotated[SaslMechanism, BeforeValidator(_upper)] = "SCRAM-SHA-512"
    """KAFKA_SASL_MECHANISM: with SASL_PLAINTEXT or SASL_SSL, SCRAM-SHA-512, SCRAM-SHA-256 or
    PLAIN (PLAIN sends the password as it is: SASL_SSL only)."""
    kafka_sasl_username: str = ""
    """KAFKA_SASL_USERNAME: the Kafka user (SASL_PLAINTEXT and SASL_SSL only, which need it)."""
    kafka_sasl_password: Secret = ""
    """KAFKA_SASL_PASSWORD: its password (secret; SASL_PLAINTEXT and SASL_SSL only, which need
    it)."""
    kafka_ssl_cafile: str = ""
    """KAFKA_SSL_CAFILE: PEM certificates of the CAs that sign the brokers' certificates (SSL
    and SASL_SSL only); empty: the system's CAs. The broker's name is checked."""

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Self:
        protocol = self.kafka_security_protocol
        sasl = protocol in SASL_PROTOCOLS
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE)"
            )
        if not sasl and (self.kafka_sasl_username or self.kafka_sasl_password):
            raise ValueError(
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are used only with "
                f"KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or SASL_SSL, not {protocol}: "
                "set the protocol, or the credentials would be ignored"
            )
        if protocol == "SASL_PLAINTEXT" and self.kafka_sasl_mechanism == "PLAIN":
            raise ValueError(
                "KAFKA_SASL_MECHANISM=PLAIN sends KAFKA_SASL_PASSWORD unencrypted over "
                "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT: use SCRAM-SHA-512 or SASL_SSL"
            )
        if self.kafka_ssl_cafile:
            if protocol not in TLS_PROTOCOLS:
                raise ValueError(
                    "KAFKA_SSL_CAFILE is used only with KAFKA_SECURITY_PROTOCOL=SSL or "
                    f"SASL_SSL, not {protocol}"
                )
            if not Path(self.kafka_ssl_cafile).is_file():
                raise ValueError(f"KAFKA_SSL_CAFILE: no file {self.kafka_ssl_cafile}")
        return self

    def kafka_client_security(self) -> dict[str, Any]:
        """The keyword arguments of an aiokafka client (AIOKafkaProducer, AIOKafkaConsumer,
        AIOKafkaAdminClient) for these settings."""
        protocol = self.kafka_security_protocol
        options: dict[str, Any] = {"security_protocol": protocol}
        if protocol in SASL_PROTOCOLS:
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = self.kafka_sasl_password
        if protocol in TLS_PROTOCOLS:
            # Verifies the chain and the broker's name (aiokafka's create_ssl_context does the
            # same); at least TLS 1.2.
            options["ssl_context"] = ssl.create_default_context(
                cafile=self.kafka_ssl_cafile or None
            )
        return options

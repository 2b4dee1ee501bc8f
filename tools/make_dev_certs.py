"""Make a private CA and the certificates docker compose serves TLS with, for development and
trials (tests use `issue` for theirs). Needs `cryptography` (a dev dependency: run it with the
project's venv).

    .venv/bin/python tools/make_dev_certs.py secrets/tls [--name api.example.com] [--days 365]

writes into the folder (the TLS_DIR of .env):

    ca.pem                  the CA's certificate: Envoy trusts it for the server, and so do
                            clients (curl --cacert, the SDK's root_certificates, checkout --ca-cert)
    server.pem, server.key  the checkout server: DNS checkout (the compose service name, which
                            Envoy and the healthcheck verify), localhost, IP 127.0.0.1
    envoy.pem, envoy.key    Envoy's TLS listener: DNS localhost, IP 127.0.0.1
    client.pem, client.key  what the server's callers show it (mTLS: the server trusts the
                            CA's client certificates): Envoy, the healthcheck, an internal
                            service calling 127.0.0.1:50051 (checkout --cert/--key)

`--name` adds DNS names or IP addresses to the server's and Envoy's certificates (the host
name clients use). The CA's key is not kept: run the tool again (with --force) for new
certificates, and a new CA to trust.

The keys are written readable by everyone (0644): docker compose mounts file secrets as they
are on the host (owner and mode included), and the server (uid 10001) and Envoy (uid 101)
must read them (client.key: both). Outside a trial, give each key to its user only, e.g.
`chown 10001 server.key && chown 101 envoy.key && chmod 0400 server.key envoy.key`.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# What docker-compose.yml mounts from TLS_DIR.
FILES = ("ca.pem", "server.pem", "server.key", "envoy.pem", "envoy.key", "client.pem", "client.key")
SERVER_NAMES = ("checkout", "localhost", "127.0.0.1")
ENVOY_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, PEM, also written to `<name>.pem` and `<name>.key`."""

    cert: bytes
    key: bytes
    cert_file: Path
    key_file: Path
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


def subject_alt_names(*names: str) -> list[x509.GeneralName]:
    """DNS names and IP addresses as subject alternative names."""
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def issue(
    folder: Path,
    name: str,
    *,
    issuer: Issued | None = None,
    usage: x509.ObjectIdentifier | None = None,
    san: list[x509.GeneralName] | None = None,
    valid_days: int = 1,
    key_mode: int = 0o600,
) -> Issued:
    """A CA certificate (no `issuer`: self-signed) or a leaf signed by `issuer`, valid from
    five minutes ago for `valid_days`, with an EC P-256 key written with `key_mode`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.private_key.public_key()),
            critical=False,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    certificate = builder.sign(issuer.private_key if issuer else key, hashes.SHA256())
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_file, key_file = folder / f"{name}.pem", folder / f"{name}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    key_file.chmod(key_mode)
    return Issued(cert_pem, key_pem, cert_file, key_file, certificate, key)


def make_compose_certs(
    folder: Path, *, extra_names: tuple[str, ...] = (), valid_days: int = 365
) -> None:
    """Write FILES into `folder` (created if needed): a new CA, the two servers' leaves and
    the callers' client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = issue(folder, "ca", valid_days=valid_days)
    ca.key_file.unlink()  # nothing else is ever signed with it
    for name, names in (("server", SERVER_NAMES), ("envoy", ENVOY_NAMES)):
        issue(
            folder,
            name,
            issuer=ca,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            san=subject_alt_names(*dict.fromkeys(names + extra_names)),
            valid_days=valid_days,
            key_mode=0o644,  # see the module's docstring
        )
    issue(
        folder,
        "client",
        issuer=ca,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        valid_days=valid_days,
        key_mode=0o644,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="where to write them (TLS_DIR)")
    parser.add_argument(
        "--name", action="append", default=[], help="another DNS name or IP for both (repeat)"
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days [365]")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args()
    existing = [f for f in FILES if (args.folder / f).exists()]
    if existing and not args.force:
        print(
            f"{args.folder}: {', '.join(existing)} exist already (--force replaces them)",
            file=sys.stderr,
        )
        return 1
    make_compose_certs(args.folder, extra_names=tuple(args.name), valid_days=args.days)
    print(f"{args.folder}: wrote {', '.join(FILES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

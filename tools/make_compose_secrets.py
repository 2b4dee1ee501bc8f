"""Write the credentials docker compose reads from CREDENTIALS_DIR, each a new random value:
one file per secret, mounted into only the services that need it (docs/operations.md,
"Deployment").

    .venv/bin/python tools/make_compose_secrets.py secrets/credentials [--force]

    mongo-root-password        MongoDB's root user (the mongo image and its init script only)
    mongo-uri-checkout         the URI of MongoDB user checkout-server (the server's MONGO_URI)
    mongo-uri-relay            ... of checkout-relay (the relays')
    mongo-uri-runner           ... of checkout-runner (the runners')
    minio-root-password        MinIO's root user (MinIO and the minio-init job only)
    minio-checkout-secret-key  the secret key of MinIO user checkout-server (the server's)
    minio-runner-secret-key    ... of checkout-runner (the runners')
    wake-secret                what servers and relays sign their UDP wake-ups with
    kafka-checkout-password    the Kafka user checkout (the servers': the status topic)
    kafka-relay-password       ... relay (the relays')
    kafka-runner-password      ... runner (the runners')
    kafka-admin-password       ... admin (the kafka-acls job's super user)

deploy/mongo/users.js makes each MongoDB user from its URI (user name and password) when the
mongo volume is new; the minio-init job makes the MinIO users from their files at every
start. The values are hex, so they go into the URIs as they are.

The files are written readable by everyone (0644): docker compose mounts file secrets as
they are on the host, and each container's user must read its own (uid 10001 for the server,
relays and runners, 999 for mongo). Outside a trial, give each file to its user and 0400.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

# MongoDB's user of each service; the MinIO users' names are in docker-compose.yml.
MONGO_USERS = {
    "mongo-uri-checkout": "checkout-server",
    "mongo-uri-relay": "checkout-relay",
    "mongo-uri-runner": "checkout-runner",
}
PLAIN = (
    "mongo-root-password",
    "minio-root-password",
    "minio-checkout-secret-key",
    "minio-runner-secret-key",
    "wake-secret",
    "kafka-checkout-password",  # hex: `,` `=` `[` `]` would break kafka-storage's --add-scram
    "kafka-relay-password",
    "kafka-runner-password",
    "kafka-admin-password",  # the kafka-acls job's super user
)
# What docker-compose.yml mounts from CREDENTIALS_DIR.
FILES = (*PLAIN, *MONGO_USERS)


def mongo_uri(user: str, password: str) -> str:
    """The URI of a MongoDB user made in `admin` by deploy/mongo/users.js."""
    return f"mongodb://{user}:{password}@mongo:27017/?authSource=admin"


def make_compose_secrets(folder: Path) -> None:
    """Write FILES into `folder` (created if needed), each with a new random value."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {name: secrets.token_hex(24) for name in PLAIN}
    values |= {name: mongo_uri(user, secrets.token_hex(24)) for name, user in MONGO_USERS.items()}
    for name, value in values.items():
        path = folder / name
        path.write_text(value + "\n")
        path.chmod(0o644)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="where to write them (CREDENTIALS_DIR)")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args()
    existing = [f for f in FILES if (args.folder / f).exists()]
    if existing and not args.force:
        print(
            f"{args.folder}: {', '.join(existing)} exist already (--force replaces them)",
            file=sys.stderr,
        )
        return 1
    make_compose_secrets(args.folder)
    print(f"wrote {', '.join(FILES)} into {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The dev stack's equality indexes (devstack/equality_indexes.sql), against the real FerretDB
over PostgreSQL: every index the service asks for on a top-level field gets a GIN twin, and
PostgreSQL uses it for FerretDB's equality filters, also once a statement has been prepared
and run many times (as FerretDB's connection pool does)."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection

from checkout_server.config import ServerSettings
from checkout_server.wiring.server import App
from devstack import FerretDB, PostgreSQL
from tests.integration.postgres_tables import postgres_of, table_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _gin_fields(postgres: PostgreSQL, table: str) -> set[str]:
    definitions = postgres.run_sql(
        "SELECT pg_get_indexdef(indexrelid, 1, true) FROM pg_index ix"
        " JOIN pg_class cl ON cl.oid = ix.indexrelid JOIN pg_am am ON am.oid = cl.relam"
        f" WHERE ix.indrelid = '{table}'::regclass AND am.amname = 'gin'"
    ).split()
    return {d.split("'")[1] for d in definitions if "'" in d}


async def test_every_top_level_index_field_gets_a_gin_twin(
    app: App, ferretdb: FerretDB, settings: ServerSettings
) -> None:
    postgres = postgres_of(ferretdb)
    statuses = table_of(postgres, settings.mongo_db, settings.mongo_status_collection)
    outbox = table_of(postgres, settings.mongo_db, settings.mongo_outbox_collection)

    # The first field of each index the service creates (mongo_outbox, mongo_status_records,
    # mongo_relay_store); `_id` is FerretDB's own.
    assert {"_id", "dedup_key", "video_id", "owner", "status"} <= _gin_fields(postgres, statuses)
    assert {"_id", "dedup_key", "video_id"} <= _gin_fields(postgres, outbox)


async def _stored(
    records: int,
    ferretdb: FerretDB,
    settings: ServerSettings,
    status_collection: AsyncCollection[dict[str, Any]],
) -> tuple[PostgreSQL, str]:
    """`records` status records (`_id` e0.., `dedup_key` k0..) inserted through FerretDB; the
    PostgreSQL under it and their table."""
    await status_collection.insert_many(
        [{"_id": f"e{i}", "dedup_key": f"k{i}"} for i in range(records)]
    )
    postgres = postgres_of(ferretdb)
    return postgres, table_of(postgres, settings.mongo_db, settings.mongo_status_collection)


async def test_postgresql_serves_ferretdbs_equality_filter_from_the_twin(
    app: App,
    ferretdb: FerretDB,
    settings: ServerSettings,
    status_collection: AsyncCollection[dict[str, Any]],
) -> None:
    postgres, table = await _stored(2000, ferretdb, settings, status_collection)
    # FerretDB's form of `{dedup_key: "k7"}` (backends/postgresql/query.go): the field name is
    # a parameter. Run more than the five times after which PostgreSQL may switch a prepared
    # statement to a generic plan, which no expression index can serve.
    plan = postgres.run_sql(
        f"ANALYZE {table};"
        f" PREPARE equal(text, jsonb) AS SELECT _jsonb FROM {table} WHERE _jsonb->$1 @> $2;"
        + " EXECUTE equal('dedup_key', '\"k7\"');" * 8
        + " EXPLAIN EXECUTE equal('dedup_key', '\"k7\"');"
    )

    assert "Bitmap Index Scan" in plan, plan
    assert "_eq_" in plan, plan
    assert "Seq Scan" not in plan, plan


async def test_a_lookup_reads_a_few_pages_after_many_inserts(
    app: App,
    ferretdb: FerretDB,
    settings: ServerSettings,
    status_collection: AsyncCollection[dict[str, Any]],
) -> None:
    # With GIN's pending list, these inserts would wait unsorted in a list every lookup reads
    # whole (until a vacuum, or 4 MB of them): the twins are made without one.
    postgres, table = await _stored(5000, ferretdb, settings, status_collection)
    plan = postgres.run_sql(
        f"ANALYZE {table};"
        f" EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)"
        f" SELECT _jsonb FROM {table} WHERE _jsonb->'_id' @> '\"e4321\"';"
    )

    index_scan = plan.split("Bitmap Index Scan", 1)[1]
    pages = int(index_scan.split("shared hit=", 1)[1].split()[0])
    assert pages <= 8, plan

"""The PostgreSQL under the tests' FerretDB: where a collection's documents are kept."""

from __future__ import annotations

from devstack import FerretDB, PostgreSQL


def postgres_of(ferretdb: FerretDB) -> PostgreSQL:
    assert ferretdb.postgres is not None, "the tests run FerretDB over PostgreSQL"
    return ferretdb.postgres


def table_of(postgres: PostgreSQL, database: str, collection: str) -> str:
    """The PostgreSQL table (schema-qualified) FerretDB keeps `collection` in."""
    name = postgres.run_sql(
        f"SELECT _jsonb->>'table' FROM \"{database}\"._ferretdb_database_metadata"
        f" WHERE _jsonb->>'_id' = '{collection}'"
    ).strip()
    assert name, f"no table for {database}.{collection}"
    return f'"{database}"."{name}"'


def analyze(ferretdb: FerretDB, database: str, collection: str) -> None:
    """Bring PostgreSQL's statistics of the collection up to date, as autovacuum does within
    a minute (FerretDB's estimate of a collection's size is read from them)."""
    postgres = postgres_of(ferretdb)
    postgres.run_sql(f"ANALYZE {table_of(postgres, database, collection)}")

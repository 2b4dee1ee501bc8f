-- Equality indexes for FerretDB 1.24 over PostgreSQL (the dev stack's database only).
--
-- FerretDB hands PostgreSQL an equality filter on a top-level field as
-- `_jsonb -> 'field' @> value`, and builds each index a client asks for as a B-tree over
-- `(_jsonb -> 'field')`. A B-tree has no `@>`, so every such filter scans the whole table.
-- For every B-tree index FerretDB creates whose first column is a top-level field, this adds a
-- GIN index over the same expression: `@>` uses it, and the filter reads the matching rows only.
-- FerretDB prepares its statements with the field name as a parameter: PostgreSQL plans each
-- execution for the actual name (a generic plan would cost more), so the expression matches.
-- The twins are made without GIN's pending list (`fastupdate = off`): with it, every insert
-- goes to an unsorted list that each lookup reads whole until a vacuum or 4 MB of entries
-- merge it, and after 100,000 inserts an `_id` lookup read 132 pages and took 2.2 ms of
-- PostgreSQL's CPU instead of 0.1 ms. Twins made before are switched and their lists merged.
--
-- Idempotent: run at every start; it also covers the indexes made before it was installed.

CREATE OR REPLACE FUNCTION checkout_equality_twin(source oid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  method text;
  target regclass;
  expression text;
  twin text;
BEGIN
  SELECT am.amname, ix.indrelid::regclass, pg_get_indexdef(source, 1, true),
         left(cl.relname, 40) || '_eq_' || source::text
    INTO method, target, expression, twin
    FROM pg_index ix
    JOIN pg_class cl ON cl.oid = ix.indexrelid
    JOIN pg_am am ON am.oid = cl.relam
   WHERE ix.indexrelid = source;
  IF method IS DISTINCT FROM 'btree'
     OR expression !~ '^\(_jsonb -> ''[^'']+''::text\)$' THEN
    RETURN;
  END IF;
  EXECUTE format(
    'CREATE INDEX IF NOT EXISTS %I ON %s USING gin (%s) WITH (fastupdate = off)',
    twin, target, expression);
END
$$;

CREATE OR REPLACE FUNCTION checkout_equality_twins() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
  made record;
BEGIN
  FOR made IN
    SELECT objid FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE INDEX'
  LOOP
    PERFORM checkout_equality_twin(made.objid);
  END LOOP;
END
$$;

DROP EVENT TRIGGER IF EXISTS checkout_equality_twins;
CREATE EVENT TRIGGER checkout_equality_twins ON ddl_command_end
  WHEN TAG IN ('CREATE INDEX')
  EXECUTE FUNCTION checkout_equality_twins();

SELECT count(checkout_equality_twin(indexrelid)) FROM pg_index;

-- Twins made with a pending list: switched off, then what the list holds is merged.
DO $$
DECLARE
  twin regclass;
BEGIN
  FOR twin IN
    SELECT cl.oid::regclass FROM pg_class cl JOIN pg_am am ON am.oid = cl.relam
     WHERE am.amname = 'gin' AND cl.relname ~ '_eq_[0-9]+$'
       AND NOT coalesce(cl.reloptions @> ARRAY['fastupdate=off'], false)
  LOOP
    EXECUTE format('ALTER INDEX %s SET (fastupdate = off)', twin);
    PERFORM gin_clean_pending_list(twin);
  END LOOP;
END
$$;

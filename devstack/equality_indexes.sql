-- Equality indexes for FerretDB 1.24 over PostgreSQL (the dev stack's database only).
--
-- FerretDB hands PostgreSQL an equality filter on a top-level field as
-- `_jsonb -> 'field' @> value`, and builds each index a client asks for as a B-tree over
-- `(_jsonb -> 'field')`. A B-tree has no `@>`, so every such filter scans the whole table.
-- For every B-tree index FerretDB creates whose first column is a top-level field, this adds a
-- GIN index over the same expression: `@>` uses it, and the filter reads the matching rows only.
-- FerretDB prepares its statements with the field name as a parameter: PostgreSQL plans each
-- execution for the actual name (a generic plan would cost more), so the expression matches.
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
  EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING gin (%s)', twin, target, expression);
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

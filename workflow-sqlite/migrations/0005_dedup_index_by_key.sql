-- Listing by dedup key alone (the console's search box, `Query::key`)
-- scanned every instance: the key's index led with the workflow. Led by
-- the key and ordered by id, one index serves that list newest first, the
-- same list within one workflow, and the dedup lookup of `create`; it
-- replaces the old one, so writes keep one index entry per keyed row.
DROP INDEX instances_dedup;
CREATE INDEX instances_dedup ON instances (dedup_key, id) WHERE dedup_key IS NOT NULL;

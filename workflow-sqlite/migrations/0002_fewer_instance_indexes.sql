-- Two indexes every claim and finish rewrote, for queries the others answer:
-- the next due waiting instance is the first pending or listening row of
-- `instances_runnable`, and leases are held only by in-progress rows, which
-- `instances_status` finds.
DROP INDEX instances_waiting;
DROP INDEX instances_lease_owner;

-- The same runnable index, its condition spelled with `OR`: SQLite checks a
-- partial index's condition on every insert and update of a row, and an
-- `IN` list of three or more values builds a temporary B-tree each time.
-- Queries name the index and repeat this exact condition.
DROP INDEX instances_runnable;
CREATE INDEX instances_runnable ON instances (run_at)
    WHERE status = 'pending' OR status = 'in_progress' OR status = 'listening';

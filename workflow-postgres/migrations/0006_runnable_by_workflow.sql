-- Due instances by workflow: a claim reads the due rows of the workflows
-- its engine runs, one bounded range each, instead of walking every due
-- row in `run_at` order and skipping other workflows' (orphans of a
-- workflow removed from the code, or another service's, were read by
-- every claim).
DROP INDEX instances_runnable;
CREATE INDEX instances_runnable ON instances (workflow, run_at)
    WHERE status IN ('pending', 'in_progress', 'listening');

-- Due instances by workflow: a claim reads the due rows of the workflows
-- its engine runs, one bounded range each, instead of walking every due
-- row in `run_at` order and skipping other workflows' (orphans of a
-- workflow removed from the code, or another service's, were read by
-- every claim, inside the write transaction). Same name and condition, so
-- queries keep naming it.
DROP INDEX instances_runnable;
CREATE INDEX instances_runnable ON instances (workflow, run_at)
    WHERE status = 'pending' OR status = 'in_progress' OR status = 'listening';

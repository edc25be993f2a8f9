-- A step's history events (`step_completed` or `step_failed`, and
-- `state_changed` when it changed the state) are read from its `steps` row
-- instead of being written again as rows of `events`: one row and one index
-- entry per step instead of two of each. Events and steps now number from
-- one shared sequence, so the history interleaves them by `seq`. Steps
-- recorded before this have their events stored as rows (history = 0).
ALTER TABLE steps ADD COLUMN history INTEGER NOT NULL DEFAULT 0;

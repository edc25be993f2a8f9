-- Runs in a row that ended without recording how (the process died, the
-- lease lapsed): counted when such an instance is claimed again or its
-- dead owner's lease is freed, back to 0 when a run records a step or a
-- failed attempt, looks for an event or suspends, and when the instance
-- is resumed. The engine pauses an instance past its limit (a crash loop).
ALTER TABLE instances ADD COLUMN interrupted_runs INTEGER NOT NULL DEFAULT 0;

-- The first run's `started` event and the event of `finish` (`completed`,
-- `failed`, `timed_out`) are read from the instance row, which a claim and
-- a finish rewrite anyway: two columns instead of two `events` rows and
-- their index entries per workflow. Later runs' `started`, cancellations
-- and everything written before this keep their `events` rows.
ALTER TABLE instances ADD COLUMN started_seq INTEGER;
ALTER TABLE instances ADD COLUMN finished_seq INTEGER;

-- The last number of the history sequence. It used to be read off the
-- ends of `events` and `steps`; numbers now also live in instance rows,
-- which that read would not see.
CREATE TABLE history_seq (
    only INTEGER PRIMARY KEY CHECK (only = 0),
    last INTEGER NOT NULL
);
INSERT INTO history_seq (only, last) SELECT 0, MAX(
    (SELECT COALESCE(MAX(seq), 0) FROM events),
    COALESCE((SELECT seq + (state IS NOT NULL) FROM steps ORDER BY seq DESC LIMIT 1), 0));

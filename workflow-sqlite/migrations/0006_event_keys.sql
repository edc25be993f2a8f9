-- Keys of events sent with one (`send_event_once`), one row per instance
-- and key, kept after the event is taken: a redelivered event whose key
-- the instance has seen is not put in its inbox again.
CREATE TABLE event_keys (
    instance_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    sent_at     INTEGER NOT NULL,
    PRIMARY KEY (instance_id, key)
) WITHOUT ROWID;

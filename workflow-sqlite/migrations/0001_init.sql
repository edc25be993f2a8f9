-- Instances: one row each. JSON documents are stored as text, times as
-- milliseconds since the Unix epoch.
CREATE TABLE instances (
    id               TEXT PRIMARY KEY NOT NULL,
    workflow         TEXT NOT NULL,
    status           TEXT NOT NULL,
    input            TEXT NOT NULL,
    output           TEXT,
    error            TEXT,
    state            TEXT,
    tags             TEXT NOT NULL DEFAULT '{}',
    dedup_key        TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    run_at           INTEGER NOT NULL,
    deadline_at      INTEGER,
    runs             INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    parent_id        TEXT,
    wait_event       TEXT,
    wait_child       TEXT,
    retry_key        TEXT,
    retry_attempts   INTEGER,
    pause_requested  INTEGER NOT NULL DEFAULT 0,
    paused_at        INTEGER
) WITHOUT ROWID;

-- Claiming scans only runnable rows, oldest due first. Listening rows are
-- due at their wait's timeout (run_at is the largest integer when none).
CREATE INDEX instances_runnable ON instances (run_at) WHERE status IN ('pending', 'in_progress', 'listening');
-- When the next waiting instance is due, for an idle worker's nap.
CREATE INDEX instances_waiting ON instances (run_at) WHERE status IN ('pending', 'listening');
CREATE INDEX instances_parent ON instances (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX instances_workflow ON instances (workflow, id);
CREATE INDEX instances_status ON instances (status, id);
CREATE INDEX instances_workflow_status ON instances (workflow, status, id);
CREATE INDEX instances_dedup ON instances (workflow, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX instances_lease_owner ON instances (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX instances_created ON instances (created_at);

-- Tags, one row per tag, for filtering; `instances.tags` holds them for reading.
CREATE TABLE instance_tags (
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    PRIMARY KEY (name, value, instance_id)
) WITHOUT ROWID;

-- Recorded steps; `seq` orders them.
CREATE TABLE steps (
    seq         INTEGER PRIMARY KEY,
    instance_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    output      TEXT,
    error       TEXT,
    state       TEXT,
    attempts    INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX steps_instance_key ON steps (instance_id, key);

-- The run history.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    instance_id TEXT NOT NULL,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    step        TEXT,
    attempt     INTEGER,
    message     TEXT,
    duration_ms INTEGER
);
CREATE INDEX events_instance ON events (instance_id, seq);

-- Events sent to instances, kept until a wait_for_event takes them.
CREATE TABLE inbox (
    seq         INTEGER PRIMARY KEY,
    instance_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    sent_at     INTEGER NOT NULL
);
CREATE INDEX inbox_instance_name ON inbox (instance_id, name, seq);

-- Cron schedules: how far engines have looked, and the last tick fired.
CREATE TABLE schedules (
    workflow      TEXT PRIMARY KEY NOT NULL,
    checked_until INTEGER NOT NULL,
    last_tick     INTEGER,
    last_instance TEXT
) WITHOUT ROWID;

-- Workflow definitions recorded by engines, for tools without the code.
CREATE TABLE definitions (
    name        TEXT PRIMARY KEY NOT NULL,
    definition  TEXT NOT NULL,
    recorded_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Instances: one row each. JSON documents are stored as text (the engine
-- parses them), times as milliseconds since the Unix epoch. Ids and other
-- compared text use the "C" collation so they sort bytewise, as UUIDv7 text
-- must to sort by creation time.
CREATE TABLE instances (
    id               TEXT COLLATE "C" PRIMARY KEY,
    workflow         TEXT COLLATE "C" NOT NULL,
    status           TEXT NOT NULL,
    input            TEXT NOT NULL,
    output           TEXT,
    error            TEXT,
    state            TEXT,
    tags             JSONB NOT NULL DEFAULT '{}',
    dedup_key        TEXT COLLATE "C",
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    run_at           BIGINT NOT NULL,
    deadline_at      BIGINT,
    runs             BIGINT NOT NULL DEFAULT 0,
    lease_owner      TEXT COLLATE "C",
    lease_expires_at BIGINT,
    parent_id        TEXT COLLATE "C",
    wait_event       TEXT,
    wait_child       TEXT COLLATE "C",
    retry_key        TEXT,
    retry_attempts   BIGINT,
    pause_requested  BOOLEAN NOT NULL DEFAULT FALSE,
    paused_at        BIGINT
);

-- Claiming scans only runnable rows, oldest due first. Listening rows are
-- due at their wait's timeout (run_at is the largest BIGINT when none).
CREATE INDEX instances_runnable ON instances (run_at)
    WHERE status IN ('pending', 'in_progress', 'listening');
CREATE INDEX instances_parent ON instances (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX instances_workflow ON instances (workflow, id);
CREATE INDEX instances_status ON instances (status, id);
CREATE INDEX instances_workflow_status ON instances (workflow, status, id);
CREATE INDEX instances_dedup ON instances (workflow, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX instances_lease_owner ON instances (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX instances_created ON instances (created_at);
CREATE INDEX instances_tags ON instances USING GIN (tags jsonb_path_ops);

-- Recorded steps; `seq` orders them.
CREATE TABLE steps (
    seq         BIGSERIAL PRIMARY KEY,
    instance_id TEXT COLLATE "C" NOT NULL,
    key         TEXT COLLATE "C" NOT NULL,
    output      TEXT,
    error       TEXT,
    state       TEXT,
    attempts    BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    UNIQUE (instance_id, key)
);

-- The run history.
CREATE TABLE events (
    seq         BIGSERIAL PRIMARY KEY,
    instance_id TEXT COLLATE "C" NOT NULL,
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    step        TEXT,
    attempt     BIGINT,
    message     TEXT,
    duration_ms BIGINT
);
CREATE INDEX events_instance ON events (instance_id, seq);

-- Events sent to instances, kept until a wait_for_event takes them.
CREATE TABLE inbox (
    seq         BIGSERIAL PRIMARY KEY,
    instance_id TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    payload     TEXT NOT NULL,
    sent_at     BIGINT NOT NULL
);
CREATE INDEX inbox_instance_name ON inbox (instance_id, name, seq);

-- Cron schedules: how far engines have looked, and the last tick fired.
CREATE TABLE schedules (
    workflow      TEXT COLLATE "C" PRIMARY KEY,
    checked_until BIGINT NOT NULL,
    last_tick     BIGINT,
    last_instance TEXT
);

-- Workflow definitions recorded by engines, for tools without the code.
CREATE TABLE definitions (
    name        TEXT COLLATE "C" PRIMARY KEY,
    definition  TEXT NOT NULL,
    recorded_at BIGINT NOT NULL
);

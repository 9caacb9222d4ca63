-- Jobs, their append-only history, and the archive of raw webhook deliveries.
-- Timestamps are unix milliseconds (UTC); JSON is stored as TEXT.

CREATE TABLE jobs (
    id                  INTEGER PRIMARY KEY,
    job_id              TEXT UNIQUE,
    submission_id       TEXT UNIQUE,
    status              TEXT NOT NULL,
    output              TEXT,
    error               TEXT,
    metadata            TEXT,
    request             TEXT,
    resolved_by         TEXT,
    poll_count          INTEGER NOT NULL DEFAULT 0,
    not_found_streak    INTEGER NOT NULL DEFAULT 0,
    raw_response        TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    completed_at        INTEGER,
    webhook_received_at INTEGER,
    last_polled_at      INTEGER,
    -- the reconciler's durable schedule: when to ask Get Job next (NULL: not scheduled)
    next_poll_at        INTEGER,
    -- 1 marks a "look now" from a webhook, served before the regular schedule
    poll_priority       INTEGER NOT NULL DEFAULT 0,
    -- 1 while a poller holds the job (next_poll_at is then the end of its lease)
    leased              INTEGER NOT NULL DEFAULT 0,
    -- id of the newest history entry: orders "newest change first"
    seq                 INTEGER NOT NULL DEFAULT 0,
    CHECK (job_id IS NOT NULL OR submission_id IS NOT NULL)
);
CREATE INDEX jobs_by_seq ON jobs (seq);
CREATE INDEX jobs_by_status_seq ON jobs (status, seq);
CREATE INDEX jobs_by_due ON jobs (poll_priority, next_poll_at) WHERE next_poll_at IS NOT NULL;
CREATE INDEX jobs_leased ON jobs (id) WHERE leased = 1;

-- AUTOINCREMENT: ids are never reused, so they can serve as stream positions.
-- Status changes double as the event stream (GET /v1/events): their ids are the stream ids, and
-- `snapshot` keeps the job JSON as it was right after the change.
CREATE TABLE job_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_pk   INTEGER NOT NULL REFERENCES jobs (id),
    at       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    detail   TEXT NOT NULL,
    snapshot TEXT
);
CREATE INDEX job_events_by_job ON job_events (job_pk, id);
CREATE INDEX job_changes ON job_events (id) WHERE kind = 'status_changed';

-- Every history entry is a change of its job: it becomes the job's newest (orders the job list).
CREATE TRIGGER job_events_touch_job AFTER INSERT ON job_events
BEGIN
    UPDATE jobs SET seq = NEW.id, updated_at = NEW.at WHERE id = NEW.job_pk;
END;

-- The outbox of signed notifications: written in the transaction of the change it announces.
CREATE TABLE notifications (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    job_pk          INTEGER NOT NULL REFERENCES jobs (id),
    change_id       INTEGER NOT NULL REFERENCES job_events (id),
    -- webhook-id: the same on every attempt
    message_id      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'exhausted')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- attempts since the last manual retry: the position in notify.retry_schedule
    round_attempts  INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    -- 1 while a notifier holds it (next_attempt_at is then the end of its lease)
    leased          INTEGER NOT NULL DEFAULT 0,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    UNIQUE (endpoint, change_id, event_type)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE state = 'pending';
CREATE INDEX notifications_by_state ON notifications (state, id);
CREATE INDEX notifications_leased ON notifications (id) WHERE leased = 1;

-- Which endpoint wants which event type: rewritten from the configuration at every start.
CREATE TABLE notify_routes (
    url        TEXT NOT NULL,
    event_type TEXT NOT NULL,
    PRIMARY KEY (url, event_type)
);

-- Endpoints that answered 410 Gone stay disabled until re-enabled through the API, or until
-- their configuration changes (`fingerprint` of url, secret and events).
CREATE TABLE notify_endpoints (
    url             TEXT PRIMARY KEY,
    fingerprint     TEXT,
    disabled_at     INTEGER,
    disabled_reason TEXT
);

CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at  INTEGER NOT NULL,
    job_pk       INTEGER REFERENCES jobs (id),
    outcome      TEXT NOT NULL CHECK (outcome IN ('accepted', 'duplicate', 'rejected')),
    reason       TEXT,
    remote_addr  TEXT,
    headers      TEXT NOT NULL,
    -- NULL for duplicates (see duplicate_of) and once pruned by retention
    body         BLOB,
    body_sha256  BLOB NOT NULL,
    body_size    INTEGER NOT NULL,
    duplicate_of INTEGER REFERENCES deliveries (id),
    pruned_at    INTEGER
);
-- One accepted copy per job and body: the dedupe is this constraint, never a check-then-insert.
CREATE UNIQUE INDEX deliveries_dedupe ON deliveries (job_pk, body_sha256) WHERE outcome = 'accepted';
CREATE INDEX deliveries_by_job ON deliveries (job_pk, id);
CREATE INDEX deliveries_by_outcome ON deliveries (outcome, id);
CREATE INDEX deliveries_with_body ON deliveries (received_at) WHERE body IS NOT NULL;

-- Idempotency-Key of POST /v1/videos: the first request's fingerprint and, once it is answered,
-- its exact response (kept at least 24 hours).
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    job_pk      INTEGER NOT NULL REFERENCES jobs (id),
    status_code INTEGER,
    response    TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- A row /readyz rewrites to prove the database takes writes.
CREATE TABLE heartbeat (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);

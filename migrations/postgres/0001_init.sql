-- The PostgreSQL schema: the same tables, constraints and indexes as SQLite's migrations
-- (0001 to 0003) end with. Timestamps are unix milliseconds (UTC) in BIGINT; JSON is kept as
-- TEXT exactly as written (the job JSON and history details are decoded by jobhook, never
-- queried inside), bodies as BYTEA.

CREATE TABLE jobs (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id              TEXT UNIQUE,
    submission_id       TEXT UNIQUE,
    status              TEXT NOT NULL,
    output              TEXT,
    error               TEXT,
    metadata            TEXT,
    request             TEXT,
    resolved_by         TEXT,
    poll_count          BIGINT NOT NULL DEFAULT 0,
    not_found_streak    BIGINT NOT NULL DEFAULT 0,
    raw_response        TEXT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    completed_at        BIGINT,
    webhook_received_at BIGINT,
    last_polled_at      BIGINT,
    -- the reconciler's durable schedule: when to ask Get Job next (NULL: not scheduled)
    next_poll_at        BIGINT,
    -- 1 marks a "look now" from a webhook, served before the regular schedule
    poll_priority       BIGINT NOT NULL DEFAULT 0,
    -- true while a poller holds the job: next_poll_at is then the end of its lease, and once
    -- that has passed (the poller's replica died) the job is simply due again for any replica
    leased              BOOLEAN NOT NULL DEFAULT FALSE,
    -- the process holding the lease: it holds advisory lock (LEASE_CLASS, lease_owner) for as
    -- long as it lives, so a lease whose owner holds no such lock was left by a dead process
    lease_owner         BIGINT,
    -- the process making this submission's Generate call (as lease_owner): a submission left
    -- `submitting` by a process that is gone becomes submit_unknown; a live replica's is its own
    submit_owner        BIGINT,
    -- id of the newest history entry: orders "newest change first"
    seq                 BIGINT NOT NULL DEFAULT 0,
    CHECK (job_id IS NOT NULL OR submission_id IS NOT NULL)
);
CREATE INDEX jobs_by_seq ON jobs (seq);
CREATE INDEX jobs_by_status_seq ON jobs (status, seq);
CREATE INDEX jobs_by_due ON jobs (poll_priority, next_poll_at) WHERE next_poll_at IS NOT NULL;
CREATE INDEX jobs_leased ON jobs (id) WHERE leased;

-- Status changes double as the event stream (GET /v1/events): their ids are the stream ids, and
-- `snapshot` keeps the job JSON as it was right after the change. Ids come from the identity
-- sequence, and only while the transaction holds the history lock (see
-- src/store/postgres/write.rs), so they commit in id order.
CREATE TABLE job_events (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_pk   BIGINT NOT NULL REFERENCES jobs (id),
    at       BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    detail   TEXT NOT NULL,
    snapshot TEXT
);
CREATE INDEX job_events_by_job ON job_events (job_pk, id);
CREATE INDEX job_changes ON job_events (id) WHERE kind = 'status_changed';

-- The outbox of signed notifications: written in the transaction of the change it announces.
CREATE TABLE notifications (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    job_pk          BIGINT NOT NULL REFERENCES jobs (id),
    change_id       BIGINT NOT NULL REFERENCES job_events (id),
    -- webhook-id: the same on every attempt
    message_id      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'exhausted')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    -- attempts since the last manual retry: the position in notify.retry_schedule
    round_attempts  BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    -- true while a notifier holds it (next_attempt_at is then the end of its lease)
    leased          BOOLEAN NOT NULL DEFAULT FALSE,
    -- the process holding the lease (as jobs.lease_owner)
    lease_owner     BIGINT,
    last_status     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    UNIQUE (endpoint, change_id, event_type)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE state = 'pending';
CREATE INDEX notifications_by_state ON notifications (state, id);
CREATE INDEX notifications_leased ON notifications (id) WHERE leased;

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
    disabled_at     BIGINT,
    disabled_reason TEXT
);

CREATE TABLE deliveries (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  BIGINT NOT NULL,
    job_pk       BIGINT REFERENCES jobs (id),
    outcome      TEXT NOT NULL CHECK (outcome IN ('accepted', 'duplicate', 'rejected')),
    reason       TEXT,
    remote_addr  TEXT,
    headers      TEXT NOT NULL,
    -- NULL for duplicates (see duplicate_of) and once pruned by retention
    body         BYTEA,
    body_sha256  BYTEA NOT NULL,
    body_size    BIGINT NOT NULL,
    duplicate_of BIGINT REFERENCES deliveries (id),
    pruned_at    BIGINT
);
-- One accepted copy per job and body: the dedupe is this constraint, never a check-then-insert.
CREATE UNIQUE INDEX deliveries_dedupe ON deliveries (job_pk, body_sha256) WHERE outcome = 'accepted';
CREATE INDEX deliveries_by_job ON deliveries (job_pk, id);
CREATE INDEX deliveries_by_outcome ON deliveries (outcome, id);
CREATE INDEX deliveries_with_body ON deliveries (received_at) WHERE body IS NOT NULL;

-- A job whose latest word from Pictory is a webhook body refers to that delivery instead of
-- keeping a second copy of the body; `raw_response` keeps Get Job answers.
ALTER TABLE jobs ADD COLUMN raw_delivery BIGINT REFERENCES deliveries (id);

-- Idempotency-Key of POST /v1/videos: the first request's fingerprint and, once it is answered,
-- its exact response (kept at least 24 hours).
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint BYTEA NOT NULL,
    job_pk      BIGINT NOT NULL REFERENCES jobs (id),
    status_code BIGINT,
    response    TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- A row /readyz rewrites to prove the database takes writes.
CREATE TABLE heartbeat (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    at BIGINT NOT NULL
);

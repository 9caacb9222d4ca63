-- The output archive (SPEC §10): copies of completed jobs' files in storage the user owns.

-- What to copy, as the replicas were configured (one row, or none when archiving is off; the
-- last replica to start sets it). Read in the transaction that completes a job, so the
-- archive task is made with the completion.
CREATE TABLE archive_policy (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    files          TEXT NOT NULL,     -- JSON array of file names
    hold_completed BOOLEAN NOT NULL   -- notify.after_archive
);

-- One row per file of a completed job: the task while `pending`, the record afterwards.
CREATE TABLE archive_files (
    job_pk       BIGINT NOT NULL REFERENCES jobs (id),
    name         TEXT NOT NULL,       -- video, thumbnail, last_frame, preview
    source_url   TEXT NOT NULL,
    status       TEXT NOT NULL,       -- pending, done, gone, too_large, failed
    attempts     BIGINT NOT NULL DEFAULT 0,
    -- while pending: when the next attempt is due, or, while one runs, when its lease ends
    due_at       BIGINT,
    -- the running attempt's token: only that attempt may record its result
    claim        TEXT,
    -- the replica running it (as jobs.lease_owner)
    lease_owner  BIGINT,
    object_key   TEXT,
    size         BIGINT,
    sha256       TEXT,
    content_type TEXT,
    error        TEXT,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (job_pk, name)
);
CREATE INDEX archive_files_due ON archive_files (due_at) WHERE status = 'pending';

-- A job whose `job.completed` notifications wait for its files (notify.after_archive); the
-- row goes when they are sent. `change_id` is the completion's, which names the messages.
CREATE TABLE archive_holds (
    job_pk    BIGINT PRIMARY KEY REFERENCES jobs (id),
    change_id BIGINT NOT NULL
);

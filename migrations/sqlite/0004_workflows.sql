-- Pictory workflows (SPEC §12): continuations and the credits each job used.

-- A continuation names the job whose last frame it starts from. Set once, when the
-- continuation is recorded; the parent is `completed`, so it never changes afterwards.
ALTER TABLE jobs ADD COLUMN parent_pk INTEGER REFERENCES jobs (id);
CREATE INDEX jobs_by_parent ON jobs (parent_pk, id) WHERE parent_pk IS NOT NULL;

-- What each job that became `completed` or `failed` cost, written in the transaction of that
-- status change (once per job: the row id is the job's). Credits are integer milli-credits and
-- durations integer milliseconds, so sums are exact (12.8 + 12.8 + 12.8 is 38.4, not the
-- 38.400000000000006 that summing floating point gives). `at` is the job's `completed_at`.
-- `metadata` is the job's own (it never changes), kept here so that grouping by a metadata
-- key reads this narrow table and not the job rows with their outputs and raw answers.
CREATE TABLE job_usage (
    job_pk        INTEGER PRIMARY KEY REFERENCES jobs (id),
    at            INTEGER NOT NULL,
    model         TEXT NOT NULL,
    status        TEXT NOT NULL,
    credits_milli INTEGER NOT NULL,
    video_ms      INTEGER NOT NULL,
    metadata      TEXT
);
CREATE INDEX job_usage_by_time ON job_usage (at);

-- The same figures summed per UTC day (days since 1970-01-01), model and status, updated in
-- the same transaction: GET /v1/usage over whole days reads a few rows per day instead of
-- every job (a year is a few thousand rows here, whatever the number of jobs).
CREATE TABLE usage_daily (
    day           INTEGER NOT NULL,
    model         TEXT NOT NULL,
    status        TEXT NOT NULL,
    jobs          INTEGER NOT NULL,
    credits_milli INTEGER NOT NULL,
    video_ms      INTEGER NOT NULL,
    PRIMARY KEY (day, model, status)
) WITHOUT ROWID;

-- Jobs that were already final before this migration are counted too, read from their
-- stored outputs with the same rules the code applies (see `domain::usage`): credits rounded
-- to thousandths, a duration like "8s" or "8" in seconds, the model from the request
-- (Pictory's default `pixverse5.5` when a submission named none, `unknown` for jobs not
-- submitted through jobhook).
INSERT INTO job_usage (job_pk, at, model, status, credits_milli, video_ms, metadata)
SELECT id,
       completed_at,
       CASE WHEN request IS NULL THEN 'unknown'
            ELSE COALESCE(json_extract(request, '$.model'), 'pixverse5.5') END,
       status,
       CASE WHEN status = 'completed'
            THEN MAX(0, CAST(ROUND(COALESCE(CAST(json_extract(output, '$.ai_credits_used') AS REAL), 0) * 1000) AS INTEGER))
            ELSE 0 END,
       CASE WHEN status = 'completed'
            THEN MAX(0, CAST(ROUND(COALESCE(CAST(RTRIM(TRIM(json_extract(output, '$.duration')), 's') AS REAL), 0) * 1000) AS INTEGER))
            ELSE 0 END,
       metadata
FROM jobs
WHERE status IN ('completed', 'failed') AND completed_at IS NOT NULL
ORDER BY completed_at, id;

INSERT INTO usage_daily (day, model, status, jobs, credits_milli, video_ms)
SELECT at / 86400000, model, status, COUNT(*), SUM(credits_milli), SUM(video_ms)
FROM job_usage
GROUP BY at / 86400000, model, status;

-- Pictory workflows (SPEC §12): continuations and the credits each job used. The same tables
-- as SQLite's migration 0004; see there for why each exists.

ALTER TABLE jobs ADD COLUMN parent_pk BIGINT REFERENCES jobs (id);
CREATE INDEX jobs_by_parent ON jobs (parent_pk, id) WHERE parent_pk IS NOT NULL;

-- One row per job that became `completed` or `failed`, written in that change's transaction:
-- integer milli-credits and milliseconds, so sums are exact.
CREATE TABLE job_usage (
    job_pk        BIGINT PRIMARY KEY REFERENCES jobs (id),
    at            BIGINT NOT NULL,
    model         TEXT NOT NULL,
    status        TEXT NOT NULL,
    credits_milli BIGINT NOT NULL,
    video_ms      BIGINT NOT NULL,
    metadata      TEXT
);
CREATE INDEX job_usage_by_time ON job_usage (at);

-- The same figures per UTC day (days since 1970-01-01), model and status.
CREATE TABLE usage_daily (
    day           BIGINT NOT NULL,
    model         TEXT NOT NULL,
    status        TEXT NOT NULL,
    jobs          BIGINT NOT NULL,
    credits_milli BIGINT NOT NULL,
    video_ms      BIGINT NOT NULL,
    PRIMARY KEY (day, model, status)
);

-- Jobs already final before this migration, read from their stored outputs with the rules the
-- code applies (`domain::usage`); a value that is not a plain number counts as zero.
INSERT INTO job_usage (job_pk, at, model, status, credits_milli, video_ms, metadata)
SELECT id,
       completed_at,
       CASE WHEN request IS NULL THEN 'unknown'
            ELSE COALESCE(request::jsonb ->> 'model', 'pixverse5.5') END,
       status,
       CASE WHEN status = 'completed' AND (output::jsonb ->> 'ai_credits_used') ~ '^[0-9]+(\.[0-9]+)?$'
            THEN ROUND((output::jsonb ->> 'ai_credits_used')::numeric * 1000)::bigint
            ELSE 0 END,
       CASE WHEN status = 'completed'
             AND rtrim(trim(output::jsonb ->> 'duration'), 's') ~ '^[0-9]+(\.[0-9]+)?$'
            THEN ROUND(rtrim(trim(output::jsonb ->> 'duration'), 's')::numeric * 1000)::bigint
            ELSE 0 END,
       metadata
FROM jobs
WHERE status IN ('completed', 'failed') AND completed_at IS NOT NULL;

INSERT INTO usage_daily (day, model, status, jobs, credits_milli, video_ms)
SELECT at / 86400000, model, status, COUNT(*), SUM(credits_milli), SUM(video_ms)
FROM job_usage
GROUP BY at / 86400000, model, status;

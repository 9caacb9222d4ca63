-- The writer now sets a job's `seq` and `updated_at` itself, once per transaction, instead of a
-- trigger rewriting the whole job row for every history entry (three times per webhook).
DROP TRIGGER job_events_touch_job;

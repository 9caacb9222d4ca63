-- Search by metadata value (GET /v1/jobs?q=, the dashboard's search box). Metadata is free-form
-- JSON that no single index covers, so each value in it is kept here once, written in the
-- transaction that records the job (metadata never changes afterwards). Finding the jobs with
-- a value is then one range of this primary key, however many jobs there are. What counts as
-- a value is `domain::search::metadata_values`: every string, number and boolean at any depth,
-- as text, trimmed, ASCII letters in lower case, 1 to 200 characters.
-- (Numbered 0006, not 0005: 0005 is left to the output archive, built at the same time.)
CREATE TABLE job_metadata_values (
    value  TEXT NOT NULL,
    job_pk INTEGER NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (value, job_pk)
) WITHOUT ROWID;

-- Jobs recorded before this table existed, by the same rules (json_tree walks every depth;
-- SQLite's lower() folds ASCII only, as the code does).
INSERT OR IGNORE INTO job_metadata_values (value, job_pk)
SELECT v, id FROM (
    SELECT j.id AS id,
           CASE t.type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false'
                       WHEN 'text' THEN lower(trim(t.atom))
                       ELSE CAST(t.atom AS TEXT) END AS v
    FROM jobs j, json_tree(j.metadata) t
    WHERE j.metadata IS NOT NULL AND t.type IN ('text', 'integer', 'real', 'true', 'false')
)
WHERE length(v) BETWEEN 1 AND 200;

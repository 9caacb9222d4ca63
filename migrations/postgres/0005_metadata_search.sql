-- Search by metadata value: the same table as SQLite's migration 0006; see there for why.
-- (Numbered 0005, not 0004: 0004 is left to the output archive, built at the same time.)
-- Byte order (COLLATE "C"), as SQLite compares: the same values sort the same on both.
CREATE TABLE job_metadata_values (
    value  TEXT COLLATE "C" NOT NULL,
    job_pk BIGINT NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (value, job_pk)
);

-- Jobs recorded before this table existed, by the same rules as the code: every string,
-- number and boolean at any depth ('strict $.**' visits each item once), trimmed of spaces,
-- ASCII letters folded (translate, since lower() would fold more than SQLite does).
INSERT INTO job_metadata_values (value, job_pk)
SELECT DISTINCT v, id FROM (
    SELECT j.id AS id,
           CASE jsonb_typeof(x)
               WHEN 'string' THEN translate(btrim(x #>> '{}'),
                   'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
               ELSE x #>> '{}' END AS v
    FROM jobs j CROSS JOIN LATERAL jsonb_path_query(j.metadata::jsonb, 'strict $.**') AS x
    WHERE j.metadata IS NOT NULL AND jsonb_typeof(x) IN ('string', 'number', 'boolean')
) leaves
WHERE length(v) BETWEEN 1 AND 200
ON CONFLICT DO NOTHING;

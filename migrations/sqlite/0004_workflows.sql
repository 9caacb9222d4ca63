-- Pictory workflows (SPEC §12): continuations and the credits each job used.

-- A continuation names the job whose last frame it starts from. Set once, when the
-- continuation is recorded; the parent is `completed`, so it never changes afterwards.
ALTER TABLE jobs ADD COLUMN parent_pk INTEGER REFERENCES jobs (id);
CREATE INDEX jobs_by_parent ON jobs (parent_pk, id) WHERE parent_pk IS NOT NULL;

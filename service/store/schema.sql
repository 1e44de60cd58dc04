-- offload job table, SQLite. `pos` is the submission order (FIFO and list cursors);
-- times are milliseconds since the epoch; data, error and result are JSON text, and so is
-- checkpoint: what the latest attempt saved with ctx.save, for the next one (schema 4).
-- Data over 1 KB is kept in `job_data` (schema 5), and `data` here is '' for those jobs;
-- shorter data, and the data of jobs stored before schema 5, is here.
CREATE TABLE IF NOT EXISTS jobs (
    pos             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    owner           TEXT    NOT NULL,
    type            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    priority        INTEGER NOT NULL,
    data            TEXT    NOT NULL,
    progress        INTEGER NOT NULL DEFAULT 0,
    message         TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_retries     INTEGER NOT NULL,
    retry_delay_ms  INTEGER NOT NULL,
    timeout_ms      INTEGER,
    seq             INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    completed_at    INTEGER,
    due_at          INTEGER NOT NULL,
    error           TEXT,
    result          TEXT,
    idempotency_key TEXT,
    request_hash    TEXT,
    lease_owner     TEXT,
    lease_until     INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    -- Jobs that follow jobs: the parents (JSON array of ids, in order), what a parent's
    -- failure does ('run', or NULL: cancel), and the parents still waited for.
    after           TEXT,
    after_failed    TEXT,
    waiting_for     TEXT,
    checkpoint      TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (priority, due_at, pos) WHERE status = 'pending';
-- Per owner: the pending count (per-user cap) and each owner's next job (fair claims).
CREATE INDEX IF NOT EXISTS jobs_fair ON jobs (owner, priority, due_at, pos) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, pos);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, pos);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Schedules ([[schedules]]): the latest slot each one fired or passed over (ms since the
-- epoch), written in the same transaction as the job it created, so a slot runs once across
-- restarts; the unique pair makes it once across nodes sharing a database too.
CREATE TABLE IF NOT EXISTS schedule_slots (
    schedule TEXT    NOT NULL,
    slot     INTEGER NOT NULL,
    job_id   TEXT,
    UNIQUE (schedule, slot)
);

-- Finished jobs by status and when they ended: retention deletes the oldest endings first,
-- and result files expire in that order. Only finished jobs have a `completed_at`.
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (status, completed_at) WHERE completed_at IS NOT NULL;

-- Jobs that follow jobs: a row per parent of each unfinished child, so the transition that
-- ends a parent finds its children with one seek, and retention keeps a parent whose
-- result an unfinished child will read. A child's rows go when it ends.
CREATE TABLE IF NOT EXISTS job_deps (
    parent TEXT NOT NULL,
    child  TEXT NOT NULL,
    PRIMARY KEY (parent, child)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS job_deps_child ON job_deps (child);

-- The data of jobs whose data is over 1 KB (schema 5), apart from their rows: every
-- transition of a job (its claim, each progress write, its ending) rewrites the whole row,
-- and a row that holds a 30 KB invoice is ten pages to write instead of one. Read only when
-- the job is claimed.
CREATE TABLE IF NOT EXISTS job_data (
    pos  INTEGER PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS job_data_goes AFTER DELETE ON jobs BEGIN
    DELETE FROM job_data WHERE pos = old.pos;
END;

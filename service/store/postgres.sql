-- offload job tables, PostgreSQL (schema 1 of this backend). Run by `PostgresStore.open()`
-- under an advisory lock, with `search_path` set to the configured schema, so nothing here
-- names it. Times are milliseconds since the epoch (bigint: the service passes them).
--
-- data, error, result and checkpoint are `json`, not `jsonb`: nothing queries inside them
-- (but a result's `file`, read with ->> by retention), and `json` keeps the text exactly as
-- the service wrote it (a client's data and a job's result keep their key order) at the cost
-- of a validity check, where `jsonb` would rewrite every value into its binary form on each
-- write and give keys back sorted.
--
-- The CHECK constraints make a row that offload could not read impossible (a hand edit that
-- breaks one is refused), so unlike an SQLite file there are no corrupt rows to fail.
CREATE TABLE IF NOT EXISTS meta (
    key   text PRIMARY KEY,
    value bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS jobs (
    pos             bigserial PRIMARY KEY,
    id              text    NOT NULL UNIQUE,
    owner           text    NOT NULL,
    type            text    NOT NULL,
    status          text    NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    priority        integer NOT NULL CHECK (priority IN (0, 1, 2)),
    data            json    NOT NULL,
    progress        integer NOT NULL DEFAULT 0,
    message         text,
    attempts        integer NOT NULL DEFAULT 0,
    max_retries     integer NOT NULL,
    retry_delay_ms  bigint  NOT NULL,
    timeout_ms      bigint,
    seq             bigint  NOT NULL DEFAULT 0,
    created_at      bigint  NOT NULL,
    started_at      bigint,
    completed_at    bigint,
    due_at          bigint  NOT NULL,
    error           json CHECK (error IS NULL OR json_typeof(error) = 'object'),
    result          json CHECK (result IS NULL OR json_typeof(result) = 'object'),
    idempotency_key text,
    request_hash    text,
    lease_owner     text,
    lease_until     bigint,
    cancel_requested boolean NOT NULL DEFAULT false,
    -- Jobs that follow jobs: the parents (in order; NULL: none), what a parent's failure
    -- does ('run', or NULL: cancel), and the parents still waited for.
    after           text[],
    after_failed    text CHECK (after_failed IS NULL OR after_failed = 'run'),
    waiting_for     text[],
    -- What the latest attempt saved with ctx.save, for the next one.
    checkpoint      json
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (priority, due_at, pos) WHERE status = 'pending';
-- Per owner: the pending count (per-user cap), the owners with pending jobs (a skip scan)
-- and each owner's next jobs (fair claims).
CREATE INDEX IF NOT EXISTS jobs_fair ON jobs (owner, priority, due_at, pos) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_until) WHERE status = 'running';
-- Running jobs per owner: the fair claim's counts and the per-owner cap, on every node.
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (owner) WHERE status = 'running';
-- Leases by node (renewals, cancel requests a node polls for) and lapsed reservations.
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_reserved ON jobs (lease_until) WHERE status = 'pending' AND lease_owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, pos);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, pos);
-- An idempotency key is the owner's across every node.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Finished jobs by status and when they ended: retention deletes the oldest endings first.
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (status, completed_at) WHERE completed_at IS NOT NULL;

-- Schedules: the latest slot each one fired or passed over; the unique pair fires a cron
-- slot once across every node sharing the database.
CREATE TABLE IF NOT EXISTS schedule_slots (
    schedule text   NOT NULL,
    slot     bigint NOT NULL,
    job_id   text,
    UNIQUE (schedule, slot)
);

-- Jobs that follow jobs: a row per parent of each unfinished child.
CREATE TABLE IF NOT EXISTS job_deps (
    parent text NOT NULL,
    child  text NOT NULL,
    PRIMARY KEY (parent, child)
);
CREATE INDEX IF NOT EXISTS job_deps_child ON job_deps (child);

-- Fair claims between owners, shared by every node: when each owner last had a job
-- started (or reserved), as a tick of `served_tick` (`fairness.Served`).
CREATE TABLE IF NOT EXISTS served (
    owner text   PRIMARY KEY,
    last  bigint NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS served_tick;

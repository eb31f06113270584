-- The scheduler's own state. Kept apart from the feed so that claims and leases (written
-- often) never bloat the feed's indexes.

-- How far the feed has been read: the next night asks for changes after `watermark - margin`.
-- `watermark` is the feed read's own snapshot time (the primary's now() in the reading
-- transaction, or a standby's last replayed commit), never a worker's clock.
CREATE TABLE IF NOT EXISTS repovault.feed_cursor (
    feed       text PRIMARY KEY,
    watermark  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A night: the workers that start while one is open (and alive) join it and share its queue.
CREATE TABLE IF NOT EXISTS repovault.nights (
    id          bigserial PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- Each `run` process; `heartbeat` is renewed while it runs (server clock).
CREATE TABLE IF NOT EXISTS repovault.workers (
    id          bigserial PRIMARY KEY,
    night_id    bigint NOT NULL REFERENCES repovault.nights (id),
    host        text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    heartbeat   timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS workers_night ON repovault.workers (night_id);

-- Work to do: one row per repository that changed and is not backed up yet (or failed).
-- A claim is a lease: `claimed_by` + `lease_until` (server clock), renewed while the backup
-- runs; an expired lease is free to claim again. `attempts` numbers the claims, so that a
-- worker whose lease was taken over cannot finish the row another worker now holds.
CREATE TABLE IF NOT EXISTS repovault.queue (
    name         text PRIMARY KEY,
    path         text NOT NULL,
    vcs          text NOT NULL,
    storage      text,
    changed_at   timestamptz NOT NULL,
    queued_at    timestamptz NOT NULL DEFAULT now(),
    claimed_by   bigint,
    lease_until  timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    -- A failed repository is not claimed again in the night it failed in, and is claimed in
    -- the next one even if the feed no longer lists it.
    failed_night bigint,
    last_error   text
);
CREATE INDEX IF NOT EXISTS queue_claimable ON repovault.queue (queued_at, name);
CREATE INDEX IF NOT EXISTS queue_storage ON repovault.queue (storage) WHERE storage IS NOT NULL;

-- The latest snapshot per repository, so that `lag` needs no store reads.
CREATE TABLE IF NOT EXISTS repovault.state (
    name                text PRIMARY KEY,
    vcs                 text NOT NULL,
    snapshot_id         text NOT NULL,
    snapshot_created_at timestamptz NOT NULL,
    -- The feed's changed_at that the snapshot is known to hold.
    feed_changed_at     timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- What each worker did, per repository: the night's summary whoever prints it.
CREATE TABLE IF NOT EXISTS repovault.results (
    id           bigserial PRIMARY KEY,
    night_id     bigint NOT NULL REFERENCES repovault.nights (id),
    worker_id    bigint REFERENCES repovault.workers (id),
    name         text NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('backed_up', 'unchanged', 'failed', 'refused', 'not_backed_up')),
    snapshot_id  text,
    bytes_read   bigint NOT NULL DEFAULT 0,
    bytes_stored bigint NOT NULL DEFAULT 0,
    error        text,
    finished_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS results_night ON repovault.results (night_id);
-- A refused feed row is reported once per night, however many workers read it.
CREATE UNIQUE INDEX IF NOT EXISTS results_refused_once ON repovault.results (night_id, name)
    WHERE outcome = 'refused';

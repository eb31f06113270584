-- The schema `repovault` itself is created by `repovault migrate` before the first
-- migration (only if missing: a role that owns it needs no CREATE on the database).

-- The change feed the contract names: one row per repository, `changed_at` bumped by the
-- forge (or a trigger, or a cron job) whenever the repository changes. A deployment that
-- reads its own tables through `feed_query` leaves this table empty.
CREATE TABLE IF NOT EXISTS repovault.repositories (
    name       text PRIMARY KEY,
    path       text NOT NULL,
    vcs        text NOT NULL DEFAULT 'git' CHECK (vcs IN ('git', 'hg')),
    changed_at timestamptz NOT NULL,
    -- Where the repository lives (a GitLab shard, an NFS server): caps per storage.
    storage    text
);
-- Each night asks for `changed_at > cursor - margin`: with this index the cost follows the
-- number of changed rows, not the size of the forge.
CREATE INDEX IF NOT EXISTS repositories_changed_at ON repovault.repositories (changed_at);

//! Database mode (issue 8), black-box: the real `repovault` binary against a real PostgreSQL 15
//! server (and a real pgbouncer in transaction pooling mode), each test with its own throwaway
//! cluster (tests/common/pg.rs), git repositories made by the tests, and feed rows written with
//! psql the way a forge (or its trigger) would write them.
//!
//! Feed rows start an hour in the past (`changed_at = now() - 1h`, outside the default 10 minute
//! margin), and a "push" commits to the repository and sets `changed_at = now()`: so the second
//! night asks exactly for what was pushed since the first.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{pg::*, *};
use serde_json::Value;

/// How repovault reaches the server.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Via {
    Direct,
    Pgbouncer,
}

/// A forge: repositories under `root`, a store, a migrated database with the feed table, and
/// a config file (`REPOVAULT_CONFIG`) with `repos_root` and whatever the test adds.
struct Forge {
    env: Env,
    root: PathBuf,
    /// The URL repovault is given (direct or through pgbouncer).
    url: String,
    /// A direct URL to the same database, for the test's own SQL.
    admin: String,
    /// In front of the cluster when the forge is reached through pgbouncer (dropped first).
    bouncer: Option<Pgbouncer>,
    cluster: PgCluster,
}

impl Forge {
    fn new(via: Via) -> Forge {
        Forge::with_config(via, "")
    }

    /// A forge whose config file also holds `config` (TOML lines).
    fn with_config(via: Via, config: &str) -> Forge {
        let cluster = PgCluster::start();
        let admin = cluster.create_db("forge");
        let bouncer = (via == Via::Pgbouncer).then(|| Pgbouncer::start(&cluster));
        let url = match &bouncer {
            Some(bouncer) => bouncer.url("forge"),
            None => admin.clone(),
        };
        Forge::build(cluster, bouncer, admin, url, config)
    }

    /// A forge on database `forge` of `cluster`: repovault uses `url`, the test `admin`.
    fn build(cluster: PgCluster, bouncer: Option<Pgbouncer>, admin: String, url: String, config: &str) -> Forge {
        let env = Env::new();
        env.init_store();
        let root = env.path("repos");
        std::fs::create_dir_all(&root).unwrap();
        let toml = format!("repos_root = {}\n{config}\n", toml_string(&root.to_string_lossy()));
        std::fs::write(env.path("repovault.toml"), toml).unwrap();
        let forge = Forge { env, root, url, admin, bouncer, cluster };
        forge.migrate_ok();
        forge
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.env.rv_command(args);
        command.env("REPOVAULT_CONFIG", self.env.path("repovault.toml"));
        command
    }

    fn rv(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn migrate_ok(&self) {
        let out = self.rv(&["migrate", "--database-url", &self.url]);
        assert_eq!(code(&out), 0, "migrate: {}{}", stdout(&out), stderr(&out));
    }

    fn run_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run", "--database-url", &self.url, "--json"];
        args.extend(extra);
        args
    }

    /// One worker, to the end: its output.
    fn run(&self, extra: &[&str]) -> Output {
        self.rv(&self.run_args(extra))
    }

    /// One worker that must finish with exit 0: its summary.
    fn run_ok(&self, extra: &[&str]) -> Value {
        let out = self.run(extra);
        assert_eq!(code(&out), 0, "run: {}{}", stdout(&out), stderr(&out));
        summary(&out)
    }

    fn spawn_run(&self, extra: &[&str]) -> Child {
        self.command(&self.run_args(extra)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }

    fn sql(&self, sql: &str) -> String {
        psql(&self.admin, sql)
    }

    /// A repository at `root/name` with one commit, and its feed row (path relative to
    /// repos_root, changed an hour ago).
    fn add_repo(&self, name: &str) -> PathBuf {
        self.add_repo_on(name, None)
    }

    fn add_repo_on(&self, name: &str, storage: Option<&str>) -> PathBuf {
        let path = new_repo(&self.root.join(name));
        commit_file(&path, "README", &format!("{name}\n"), "first");
        self.feed_row(name, name, storage, "now() - interval '1 hour'");
        path
    }

    /// Writes (or replaces) the feed row of `name`.
    fn feed_row(&self, name: &str, path: &str, storage: Option<&str>, changed_at: &str) {
        let storage = storage.map(sql_string).unwrap_or_else(|| "NULL".into());
        self.sql(&format!(
            "INSERT INTO repovault.repositories (name, path, vcs, changed_at, storage) \
             VALUES ({}, {}, 'git', {changed_at}, {storage}) \
             ON CONFLICT (name) DO UPDATE SET path = EXCLUDED.path, changed_at = EXCLUDED.changed_at, \
             storage = EXCLUDED.storage",
            sql_string(name),
            sql_string(path)
        ));
    }

    /// A push: a new commit, and the feed row's `changed_at` set to now.
    fn push(&self, name: &str) {
        commit_file(&self.root.join(name), "pushed", &noise_text(name.len() as u64, 40), "pushed");
        self.sql(&format!("UPDATE repovault.repositories SET changed_at = now() WHERE name = {}", sql_string(name)));
    }

    /// Snapshots per repository, from the store.
    fn snapshots(&self) -> HashMap<String, usize> {
        let out = self.env.rv(&["snapshots", "--json"]);
        assert_eq!(code(&out), 0, "snapshots: {}", stderr(&out));
        let mut counts = HashMap::new();
        for snapshot in serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap() {
            *counts.entry(snapshot["repo"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
        counts
    }

    /// Asserts each repository has exactly the expected number of snapshots (absent: none).
    fn assert_snapshots(&self, expected: &[(&str, usize)]) {
        let counts = self.snapshots();
        for (name, want) in expected {
            assert_eq!(counts.get(*name).copied().unwrap_or(0), *want, "snapshots of {name}: {counts:?}");
        }
    }

    /// `backed_up` results per repository recorded in the database, all nights.
    fn backed_up_results(&self) -> HashMap<String, usize> {
        psql_rows(&self.admin, "SELECT name, count(*) FROM repovault.results WHERE outcome = 'backed_up' GROUP BY name")
            .into_iter()
            .map(|row| (row[0].clone(), row[1].parse().unwrap()))
            .collect()
    }
}

impl Forge {
    /// `lag --database-url --json` that must exit 0: the report.
    fn lag_ok(&self) -> Value {
        let out = self.rv(&["lag", "--database-url", &self.url, "--json"]);
        assert_eq!(code(&out), 0, "lag: {}{}", stdout(&out), stderr(&out));
        summary(&out)
    }

    /// Asserts the lag report lists exactly `names`, each with lag 0.
    fn assert_all_fresh(&self, names: &[&str]) {
        let report = self.lag_ok();
        let mut listed: Vec<&str> =
            report["repos"].as_array().unwrap().iter().map(|r| r["repo"].as_str().unwrap()).collect();
        listed.sort();
        let mut want = names.to_vec();
        want.sort();
        assert_eq!(listed, want, "lag lists every repository the feed knows: {report}");
        assert_eq!(count(&report, "max_lag_seconds"), 0, "{report}");
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `--json` summary a worker printed.
fn summary(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}) in:\n{}\n{}", stdout(out), stderr(out)))
}

fn count(summary: &Value, field: &str) -> u64 {
    summary[field].as_u64().unwrap_or_else(|| panic!("no {field} in the summary {summary}"))
}

fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn toml_string(text: &str) -> String {
    format!("'{text}'")
}

/// Waits (at most two minutes) for a spawned worker; its output.
fn finish(child: Child) -> Output {
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output().unwrap()));
    receiver.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| {
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        panic!("worker {pid} did not finish within two minutes")
    })
}

/// Waits (bounded) until `condition` holds; whether it did.
fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A bare repository at `bare` made from a work tree at `work`; `push_to_bare` adds commits.
fn bare_repo(work: &Path, bare: &Path) {
    new_repo(work);
    commit_file(work, "README", &format!("{}\n", bare.display()), "first");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(work, &["clone", "-q", "--bare", &work.to_string_lossy(), &bare.to_string_lossy()]);
}

fn push_to_bare(work: &Path, bare: &Path) {
    commit_file(work, "pushed", "pushed\n", "pushed");
    git(work, &["push", "-q", &bare.to_string_lossy(), "main"]);
}

/// The store's `snapshots NAME --json` of the latest snapshot's refs, against the repository's.
fn assert_restores(forge: &Forge, name: &str, source: &Path) {
    let dest = forge.env.path(&format!("restored/{}", name.replace('/', "_")));
    forge.env.restore_matches(name, &dest, source);
}

// ---------------------------------------------------------------------------------------------
// migrate

#[test]
fn migrate_is_idempotent_and_safe_when_several_run_at_once() {
    let cluster = PgCluster::start();
    let url = cluster.create_db("fresh");
    let env = Env::new();
    let migrations: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("schema"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql") && n.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert!(!migrations.is_empty());

    // Four hosts start at once on an empty database.
    let children: Vec<Child> = (0..4)
        .map(|_| {
            env.rv_command(&["migrate", "--database-url", &url])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = finish(child);
        assert_eq!(code(&out), 0, "concurrent migrate: {}{}", stdout(&out), stderr(&out));
    }
    let versions = psql_rows(&url, "SELECT version FROM repovault.schema_version ORDER BY version");
    assert_eq!(versions.len(), migrations.len(), "each migration recorded once: {versions:?}");

    // Data written since survives a second migrate, which applies nothing.
    psql(
        &url,
        "INSERT INTO repovault.repositories (name, path, vcs, changed_at) VALUES ('kept', '/srv/kept', 'git', now())",
    );
    let again = env.rv(&["migrate", "--database-url", &url]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert!(stdout(&again).contains("up to date"), "second migrate says it is up to date: {}", stdout(&again));
    assert_eq!(psql(&url, "SELECT count(*) FROM repovault.repositories WHERE name = 'kept'"), "1");
    assert_eq!(psql_rows(&url, "SELECT version FROM repovault.schema_version").len(), migrations.len());
}

// ---------------------------------------------------------------------------------------------
// The feed drives the night

fn feed_drives_exactly_the_changed_repositories(via: Via) {
    let forge = Forge::new(via);
    let names = ["alpha", "group/beta", "group/sub/gamma", "delta", "epsilon.git", "zeta"];
    let paths: Vec<PathBuf> = names.iter().map(|n| forge.add_repo(n)).collect();

    // Night one: the feed has never been read, so every row is asked for.
    let night1 = forge.run_ok(&["--jobs", "2"]);
    assert_eq!(count(&night1, "examined"), 6, "{night1}");
    assert_eq!(count(&night1, "backed_up"), 6, "{night1}");
    forge.assert_snapshots(&names.map(|n| (n, 1)));

    // Night two: exactly the two pushed.
    forge.push("group/beta");
    forge.push("delta");
    let night2 = forge.run_ok(&[]);
    assert_eq!(count(&night2, "examined"), 2, "only what the feed says changed: {night2}");
    assert_eq!(count(&night2, "backed_up"), 2, "{night2}");
    assert_eq!(count(&night2, "failed"), 0, "{night2}");
    forge.assert_snapshots(&[
        ("alpha", 1),
        ("group/beta", 2),
        ("group/sub/gamma", 1),
        ("delta", 2),
        ("epsilon.git", 1),
        ("zeta", 1),
    ]);
    assert_restores(&forge, "group/beta", &paths[1]);

    // Night three: one more push; last night's pushes may be read again (within the margin)
    // but are unchanged.
    forge.push("alpha");
    let night3 = forge.run_ok(&[]);
    assert_eq!(count(&night3, "backed_up"), 1, "{night3}");
    assert_eq!(count(&night3, "unchanged"), count(&night3, "examined") - 1, "{night3}");
    forge.assert_snapshots(&[("alpha", 2), ("group/beta", 2), ("delta", 2), ("zeta", 1)]);

    // Night four: nothing pushed, nothing backed up.
    let night4 = forge.run_ok(&[]);
    assert_eq!(count(&night4, "backed_up"), 0, "{night4}");
    assert_eq!(forge.snapshots().values().sum::<usize>(), 9);
    forge.assert_all_fresh(&names);
}

#[test]
fn feed_drives_exactly_the_changed_repositories_night_after_night() {
    feed_drives_exactly_the_changed_repositories(Via::Direct);
}

#[test]
fn feed_drives_exactly_the_changed_repositories_through_pgbouncer() {
    feed_drives_exactly_the_changed_repositories(Via::Pgbouncer);
}

#[test]
fn repository_changed_on_disk_but_not_in_the_feed_is_untouched() {
    let forge = Forge::new(Via::Direct);
    let quiet = forge.add_repo("quiet");
    forge.add_repo("other");
    forge.run_ok(&[]);

    // A commit on disk that the feed does not report: no disk scan finds it.
    commit_file(&quiet, "sneaky", "not in the feed\n", "sneaky");
    let night2 = forge.run_ok(&[]);
    assert_eq!(count(&night2, "backed_up"), 0, "{night2}");
    assert_eq!(count(&night2, "examined"), 0, "{night2}");
    forge.assert_snapshots(&[("quiet", 1), ("other", 1)]);

    // Once the feed reports it, it is backed up.
    forge.sql("UPDATE repovault.repositories SET changed_at = now() WHERE name = 'quiet'");
    let night3 = forge.run_ok(&[]);
    assert_eq!(count(&night3, "backed_up"), 1, "{night3}");
    forge.assert_snapshots(&[("quiet", 2), ("other", 1)]);
    assert_restores(&forge, "quiet", &quiet);
}

#[test]
fn change_reported_during_a_run_is_caught_by_the_next_even_with_a_small_margin() {
    // A one-second margin: only the cursor (the feed read's own snapshot time) keeps the change.
    let forge = Forge::with_config(Via::Direct, "feed_margin = '1s'");
    let early = forge.add_repo("early");
    big_repo(&forge.root.join("slow"), 4, 1 << 20);
    forge.feed_row("slow", "slow", None, "now() - interval '1 hour'");

    let worker = forge.spawn_run(&["--jobs", "1", "--rate-limit", "1MiB"]);
    assert!(wait_for_stored_bytes(&forge.env.path("store"), 2 << 20), "the slow backup did not get going");
    // Pushed while the night runs, more than the margin after the night read the feed.
    forge.push("early");
    let out = finish(worker);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));

    let next = forge.run_ok(&[]);
    assert!(count(&next, "examined") >= 1, "{next}");
    let counts = forge.snapshots();
    assert_eq!(counts.get("early"), Some(&2), "the push during the first run is backed up by the next: {counts:?}");
    assert_restores(&forge, "early", &early);
}

/// GitLab stamps `last_repository_updated_at` at most every 5 minutes: a push soon after a
/// stamped one leaves the row as it was. A snapshot taken within the margin of the stamp does
/// not prove it holds everything, so the next night looks again and finds the unstamped push.
#[test]
fn a_push_the_forge_left_unstamped_soon_after_a_stamped_one_is_not_lost() {
    let forge = Forge::new(Via::Direct);
    let repo = forge.add_repo("coarse");
    forge.push("coarse");
    let night1 = forge.run_ok(&[]);
    assert_eq!(count(&night1, "backed_up"), 1, "{night1}");

    // Pushed again a moment later: the forge does not stamp it (throttled).
    commit_file(&repo, "unstamped", "pushed within the forge's 5 minutes\n", "unstamped");
    let night2 = forge.run_ok(&[]);
    assert_eq!(count(&night2, "backed_up"), 1, "the unstamped push is backed up: {night2}");
    forge.assert_snapshots(&[("coarse", 2)]);
    assert_restores(&forge, "coarse", &repo);
}

#[test]
fn feed_read_from_a_lagging_standby_never_hides_a_change() {
    let forge = Forge::new(Via::Direct);
    let standby = PgCluster::standby_of(&forge.cluster);
    let config = forge.env.path("repovault.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!("feed_database_url = '{}'\nfeed_margin = '1s'\n", standby.url("forge")));
    std::fs::write(&config, toml).unwrap();
    let a = forge.add_repo("a");
    forge.add_repo("b");
    let replica = standby.url("forge");
    let replicated = |sql: &str| wait_until(Duration::from_secs(30), || try_psql(&replica, sql).as_deref() == Ok("t"));
    assert!(replicated("SELECT count(*) = 2 FROM repovault.repositories"), "the standby did not catch up");
    let night1 = forge.run_ok(&[]);
    assert_eq!(count(&night1, "backed_up"), 2, "{night1}");

    // The replica stops replaying; a push lands on the primary, well over the margin before
    // the next night.
    psql(&replica, "SELECT pg_wal_replay_pause()");
    forge.push("a");
    std::thread::sleep(Duration::from_secs(2));
    let night2 = forge.run_ok(&[]);
    assert_eq!(count(&night2, "backed_up"), 0, "the replica does not show the push yet: {night2}");

    // Once the replica has it, the next night backs it up: the cursor was held back.
    psql(&replica, "SELECT pg_wal_replay_resume()");
    assert!(
        replicated("SELECT changed_at > now() - interval '10 minutes' FROM repovault.repositories WHERE name = 'a'"),
        "the standby did not replay the push"
    );
    let night3 = forge.run_ok(&[]);
    assert_eq!(count(&night3, "backed_up"), 1, "the push hidden by the lagging replica: {night3}");
    forge.assert_snapshots(&[("a", 2), ("b", 1)]);
    assert_restores(&forge, "a", &a);
}

// ---------------------------------------------------------------------------------------------
// Forge schemas through feed_query

/// GitLab's tables and columns (db/structure.sql): timestamps without time zone in UTC,
/// hashed storage paths under a shard, full names in routes.
const GITLAB_SCHEMA: &str = "
CREATE TABLE shards (id serial PRIMARY KEY, name varchar NOT NULL);
CREATE TABLE projects (
    id bigserial PRIMARY KEY, name varchar, path varchar,
    last_activity_at timestamp without time zone,
    last_repository_updated_at timestamp without time zone,
    repository_storage varchar NOT NULL DEFAULT 'default',
    pool_repository_id bigint, pending_delete boolean DEFAULT false, archived boolean DEFAULT false);
CREATE TABLE project_repositories (
    id bigserial PRIMARY KEY, shard_id integer NOT NULL REFERENCES shards(id),
    disk_path varchar NOT NULL, project_id bigint NOT NULL REFERENCES projects(id), object_format smallint DEFAULT 0);
CREATE TABLE routes (id bigserial PRIMARY KEY, source_id bigint NOT NULL, source_type varchar NOT NULL,
    path varchar NOT NULL, name varchar);
CREATE INDEX index_projects_on_last_repository_updated_at ON projects (last_repository_updated_at);
";

/// The feed query of the notes, with the storage (shard) column.
const GITLAB_FEED: &str = "SELECT r.path::text AS name, sh.name || '/' || pr.disk_path || '.git' AS path, \
    'git' AS vcs, p.last_repository_updated_at AT TIME ZONE 'UTC' AS changed_at, sh.name::text AS storage \
    FROM projects p JOIN project_repositories pr ON pr.project_id = p.id JOIN shards sh ON sh.id = pr.shard_id \
    JOIN routes r ON r.source_type = 'Project' AND r.source_id = p.id \
    WHERE p.last_repository_updated_at > ($1::timestamptz AT TIME ZONE 'UTC') AND NOT p.pending_delete";

#[test]
fn gitlab_shaped_schema_through_feed_query() {
    let forge = Forge::with_config(Via::Direct, &format!("feed_query = '''{GITLAB_FEED}'''"));
    // The session time zone is not UTC: timestamps without time zone must still be read as UTC.
    forge.sql("ALTER DATABASE forge SET timezone = 'America/New_York'");
    forge.sql(GITLAB_SCHEMA);
    forge.sql("INSERT INTO shards (name) VALUES ('default'), ('nfs2')");
    let an_hour_ago = "(now() AT TIME ZONE 'UTC') - interval '1 hour'";
    // (route, shard, last_repository_updated_at, pending_delete)
    let projects = [
        ("gitlab-org/gitlab", 1, an_hour_ago, false),
        ("gitlab-org/sub/runner", 2, an_hour_ago, false),
        ("alice/dotfiles", 1, an_hour_ago, false),
        ("bob/deleted", 1, an_hour_ago, true),
        ("carol/never-pushed", 2, "NULL", false),
    ];
    let mut repos = HashMap::new();
    for (route, shard, updated, pending_delete) in projects {
        let id = forge.sql(&format!(
            "INSERT INTO projects (name, path, last_repository_updated_at, pending_delete) \
             VALUES ('p', 'p', {updated}, {pending_delete}) RETURNING id"
        ));
        let disk_path = forge.sql(&format!(
            "INSERT INTO project_repositories (shard_id, project_id, disk_path) VALUES ({shard}, {id}, \
             '@hashed/' || substr(encode(sha256('{id}'::bytea), 'hex'), 1, 2) || '/' || \
             substr(encode(sha256('{id}'::bytea), 'hex'), 3, 2) || '/' || encode(sha256('{id}'::bytea), 'hex')) \
             RETURNING disk_path"
        ));
        forge.sql(&format!(
            "INSERT INTO routes (source_id, source_type, path) VALUES ({id}, 'Project', {})",
            sql_string(route)
        ));
        let shard_name = if shard == 1 { "default" } else { "nfs2" };
        let bare = forge.root.join(format!("{shard_name}/{disk_path}.git"));
        let work = forge.env.path(&format!("work/{id}"));
        bare_repo(&work, &bare);
        repos.insert(route, (id, work, bare));
    }
    assert!(repos["gitlab-org/gitlab"].2.to_string_lossy().contains("/default/@hashed/6b/86/6b86b273"));

    let night1 = forge.run_ok(&[]);
    assert_eq!(count(&night1, "backed_up"), 3, "{night1}");
    forge.assert_snapshots(&[
        ("gitlab-org/gitlab", 1),
        ("gitlab-org/sub/runner", 1),
        ("alice/dotfiles", 1),
        ("bob/deleted", 0),
        ("carol/never-pushed", 0),
    ]);

    // A push to the runner: GitLab stamps last_repository_updated_at (UTC wall clock).
    let (id, work, bare) = &repos["gitlab-org/sub/runner"];
    push_to_bare(work, bare);
    forge.sql(&format!("UPDATE projects SET last_repository_updated_at = now() AT TIME ZONE 'UTC' WHERE id = {id}"));
    let night2 = forge.run_ok(&[]);
    assert_eq!(count(&night2, "examined"), 1, "{night2}");
    assert_eq!(count(&night2, "backed_up"), 1, "{night2}");
    forge.assert_snapshots(&[("gitlab-org/gitlab", 1), ("gitlab-org/sub/runner", 2), ("alice/dotfiles", 1)]);
    assert_restores(&forge, "gitlab-org/sub/runner", bare);
    forge.assert_all_fresh(&["gitlab-org/gitlab", "gitlab-org/sub/runner", "alice/dotfiles"]);
}

/// Gitea's (and Forgejo's) tables: `updated_unix` seconds, pull mirrors' sync time in `mirror`.
const GITEA_SCHEMA: &str = "
CREATE TABLE repository (id bigserial PRIMARY KEY, owner_id bigint, owner_name varchar(255),
    lower_name varchar(255) NOT NULL, name varchar(255) NOT NULL, is_empty boolean, is_mirror boolean,
    status integer NOT NULL DEFAULT 0, created_unix bigint, updated_unix bigint);
CREATE INDEX idx_repository_updated_unix ON repository (updated_unix);
CREATE TABLE mirror (id bigserial PRIMARY KEY, repo_id bigint, \"interval\" bigint, enable_prune boolean,
    updated_unix bigint, next_update_unix bigint);
";

const GITEA_FEED: &str = "SELECT r.owner_name || '/' || r.name AS name, \
    lower(r.owner_name) || '/' || lower(r.name) || '.git' AS path, 'git' AS vcs, \
    to_timestamp(greatest(r.updated_unix, coalesce(m.updated_unix, 0))) AS changed_at \
    FROM repository r LEFT JOIN mirror m ON m.repo_id = r.id \
    WHERE greatest(r.updated_unix, coalesce(m.updated_unix, 0)) > extract(epoch FROM $1::timestamptz) \
    AND NOT r.is_empty AND r.status = 0";

#[test]
fn gitea_shaped_schema_through_feed_query() {
    let forge = Forge::with_config(Via::Direct, &format!("feed_query = '''{GITEA_FEED}'''"));
    forge.sql(GITEA_SCHEMA);
    let an_hour_ago = "extract(epoch FROM now() - interval '1 hour')::bigint";
    // (owner, name, is_empty, is_mirror, status)
    let rows = [
        ("Alice", "Website", false, false, 0),
        ("bob", "tools", false, false, 0),
        ("Mirrors", "Upstream", false, true, 0),
        ("carol", "empty", true, false, 0),
        ("dave", "broken", false, false, 3),
    ];
    let mut repos = HashMap::new();
    for (owner, name, is_empty, is_mirror, status) in rows {
        let id = forge.sql(&format!(
            "INSERT INTO repository (owner_name, lower_name, name, is_empty, is_mirror, status, created_unix, \
             updated_unix) VALUES ('{owner}', lower('{name}'), '{name}', {is_empty}, {is_mirror}, {status}, \
             {an_hour_ago}, {an_hour_ago}) RETURNING id"
        ));
        if is_mirror {
            forge.sql(&format!("INSERT INTO mirror (repo_id, updated_unix) VALUES ({id}, {an_hour_ago})"));
        }
        let bare = forge.root.join(format!("{}/{}.git", owner.to_lowercase(), name.to_lowercase()));
        let work = forge.env.path(&format!("work/{id}"));
        bare_repo(&work, &bare);
        repos.insert(format!("{owner}/{name}"), (id, work, bare));
    }

    let night1 = forge.run_ok(&[]);
    assert_eq!(count(&night1, "backed_up"), 3, "{night1}");
    forge.assert_snapshots(&[
        ("Alice/Website", 1),
        ("bob/tools", 1),
        ("Mirrors/Upstream", 1),
        ("carol/empty", 0),
        ("dave/broken", 0),
    ]);

    // A pull mirror synced: only `mirror.updated_unix` moves (the repository's may not).
    let (id, work, bare) = &repos["Mirrors/Upstream"];
    push_to_bare(work, bare);
    forge.sql(&format!("UPDATE mirror SET updated_unix = extract(epoch FROM now())::bigint WHERE repo_id = {id}"));
    let night2 = forge.run_ok(&[]);
    assert_eq!(count(&night2, "examined"), 1, "{night2}");
    assert_eq!(count(&night2, "backed_up"), 1, "{night2}");
    forge.assert_snapshots(&[("Alice/Website", 1), ("bob/tools", 1), ("Mirrors/Upstream", 2)]);
    assert_restores(&forge, "Mirrors/Upstream", bare);
    forge.assert_all_fresh(&["Alice/Website", "bob/tools", "Mirrors/Upstream"]);
}

// ---------------------------------------------------------------------------------------------
// Many workers

fn three_workers_back_up_each_changed_repository_exactly_once(via: Via) {
    let forge = Forge::new(via);
    let names: Vec<String> = (0..24).map(|i| format!("team{}/repo{i}", i % 4)).collect();
    for name in &names {
        forge.add_repo(name);
    }

    let nights = |forge: &Forge| -> Vec<Value> {
        let workers: Vec<Child> = (0..3).map(|_| forge.spawn_run(&["--jobs", "2"])).collect();
        let outputs: Vec<Output> = workers.into_iter().map(finish).collect();
        outputs
            .iter()
            .map(|out| {
                assert_eq!(code(out), 0, "worker: {}{}", stdout(out), stderr(out));
                summary(out)
            })
            .collect()
    };

    let night1 = nights(&forge);
    if let Some(bouncer) = &forge.bouncer {
        assert!(bouncer.log().contains("login attempt: db=forge"), "the workers went through pgbouncer");
    }
    let counts = forge.snapshots();
    for name in &names {
        assert_eq!(counts.get(name), Some(&1), "{name} backed up exactly once: {counts:?}");
    }
    assert_eq!(counts.len(), names.len());
    let results = forge.backed_up_results();
    for name in &names {
        assert_eq!(results.get(name), Some(&1), "one backed_up result for {name}: {results:?}");
    }
    assert_same_summary_per_night(&night1);
    let total: u64 = distinct_nights(&night1).iter().map(|s| count(s, "backed_up")).sum();
    assert_eq!(total, names.len() as u64, "the nights' summaries add up to every repository: {night1:?}");

    // The next night: eight pushed, three workers again.
    let pushed: Vec<&String> = names.iter().step_by(3).collect();
    for name in &pushed {
        forge.push(name);
    }
    let night2 = nights(&forge);
    assert_same_summary_per_night(&night2);
    let counts = forge.snapshots();
    for name in &names {
        let want = if pushed.contains(&name) { 2 } else { 1 };
        assert_eq!(counts.get(name), Some(&want), "{name}: {counts:?}");
    }
}

/// One summary per night that the workers took part in.
fn distinct_nights(summaries: &[Value]) -> Vec<&Value> {
    let mut seen = Vec::new();
    let mut nights = Vec::new();
    for summary in summaries {
        let night = summary["night_id"].clone();
        assert!(!night.is_null(), "no night_id in {summary}");
        if !seen.contains(&night) {
            seen.push(night);
            nights.push(summary);
        }
    }
    nights
}

/// Workers of the same night print the same totals, whichever prints.
fn assert_same_summary_per_night(summaries: &[Value]) {
    let fields = ["examined", "changed", "backed_up", "unchanged", "failed", "bytes_read", "bytes_stored"];
    for a in summaries {
        for b in summaries.iter().filter(|b| b["night_id"] == a["night_id"]) {
            for field in fields {
                assert_eq!(a[field], b[field], "{field} differs between workers of one night:\n{a}\n{b}");
            }
        }
    }
    let mut workers: Vec<String> = summaries.iter().map(|s| s["worker_id"].to_string()).collect();
    workers.sort();
    workers.dedup();
    assert_eq!(workers.len(), summaries.len(), "each worker has its own worker_id: {summaries:?}");
}

#[test]
fn three_workers_back_up_each_changed_repository_exactly_once_direct() {
    three_workers_back_up_each_changed_repository_exactly_once(Via::Direct);
}

#[test]
fn three_workers_back_up_each_changed_repository_exactly_once_through_pgbouncer() {
    three_workers_back_up_each_changed_repository_exactly_once(Via::Pgbouncer);
}

/// Processes (other than us) whose command line or working directory names `path`.
fn processes_touching(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == std::process::id().to_string() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        if cmdline.contains(&needle) || cwd.starts_with(path) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

fn killed_worker_repositories_are_finished_by_another(via: Via) {
    let forge = Forge::with_config(via, "claim_lease = '3s'");
    // One repository slow to back up (4 MiB of noise read at 1 MiB/s), a few quick ones.
    let slow = big_repo(&forge.root.join("slow"), 4, 1 << 20);
    forge.feed_row("slow", "slow", None, "now() - interval '1 hour'");
    let quick: Vec<String> = (0..4).map(|i| format!("quick{i}")).collect();
    for name in &quick {
        forge.add_repo(name);
    }

    let mut doomed = forge.spawn_run(&["--jobs", "1", "--rate-limit", "1MiB"]);
    let store = forge.env.path("store");
    assert!(wait_for_stored_bytes(&store, 1 << 20), "the slow backup did not get going");
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    // Its children (git rev-list ...) die with it.
    assert!(
        wait_until(Duration::from_secs(5), || processes_touching(&slow).is_empty()),
        "processes of the killed worker still at work: {:?}",
        processes_touching(&slow)
    );

    // Another worker joins the night, takes over the expired claim, and finishes it.
    let rescuer = forge.run_ok(&["--jobs", "2"]);
    assert_eq!(count(&rescuer, "failed"), 0, "{rescuer}");
    assert_eq!(count(&rescuer, "backed_up"), 5, "the night's total counts the killed worker's work: {rescuer}");
    let mut expected: Vec<(&str, usize)> = quick.iter().map(|n| (n.as_str(), 1)).collect();
    expected.push(("slow", 1));
    forge.assert_snapshots(&expected);
    assert_restores(&forge, "slow", &slow);
    assert_eq!(code(&forge.env.rv(&["verify"])), 0);
}

#[test]
fn killed_worker_repositories_are_finished_by_another_direct() {
    killed_worker_repositories_are_finished_by_another(Via::Direct);
}

#[test]
fn killed_worker_repositories_are_finished_by_another_through_pgbouncer() {
    killed_worker_repositories_are_finished_by_another(Via::Pgbouncer);
}

#[test]
fn per_storage_caps_are_never_exceeded() {
    let forge = Forge::new(Via::Direct);
    let mut names = Vec::new();
    for i in 0..8 {
        let name = format!("repo{i}");
        let storage = if i % 2 == 0 { "nfs-a" } else { "nfs-b" };
        big_repo(&forge.root.join(&name), 2, 400_000);
        forge.feed_row(&name, &name, Some(storage), "now() - interval '1 hour'");
        names.push(name);
    }

    // Record the live claims per storage while three workers run, each willing to run three
    // backups at once but capped at one per storage across all of them.
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = {
        let (stop, admin) = (stop.clone(), forge.admin.clone());
        std::thread::spawn(move || {
            let mut peak: HashMap<String, usize> = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                let rows = try_psql(
                    &admin,
                    "SELECT coalesce(storage, '-') || '|' || count(*) FROM repovault.queue \
                     WHERE claimed_by IS NOT NULL AND lease_until > now() GROUP BY storage",
                )
                .unwrap_or_default();
                for row in rows.lines() {
                    let (storage, live) = row.split_once('|').unwrap();
                    let live: usize = live.parse().unwrap();
                    let entry = peak.entry(storage.to_owned()).or_insert(0);
                    *entry = (*entry).max(live);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let workers: Vec<Child> =
        (0..3).map(|_| forge.spawn_run(&["--jobs", "3", "--jobs-per-storage", "1", "--rate-limit", "2MiB"])).collect();
    let outputs: Vec<Output> = workers.into_iter().map(finish).collect();
    stop.store(true, Ordering::Relaxed);
    let peak = recorder.join().unwrap();

    for out in &outputs {
        assert_eq!(code(out), 0, "worker: {}{}", stdout(out), stderr(out));
    }
    assert!(!peak.is_empty(), "no claim was ever seen: the recorder saw nothing");
    for (storage, live) in &peak {
        assert!(*live <= 1, "storage {storage} had {live} backups at once (cap 1): {peak:?}");
    }
    let counts = forge.snapshots();
    for name in &names {
        assert_eq!(counts.get(name), Some(&1), "{name}: {counts:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Connections fail

fn server_restarted_mid_run_then_the_next_run_completes_the_work(via: Via) {
    const PASSWORD: &str = "Restart-Pw-4711";
    const CONFIG: &str = "claim_lease = '5s'\ndatabase_retry = '60s'";
    let mut forge = match via {
        // With a password in the URL, to see that no message shows it.
        Via::Direct => {
            let cluster = PgCluster::start();
            let url = cluster.create_db_with_password("forge", PASSWORD);
            let admin = cluster.url("forge");
            Forge::build(cluster, None, admin, url, CONFIG)
        }
        // The server restarts behind the pooler, which stays up.
        Via::Pgbouncer => Forge::with_config(Via::Pgbouncer, CONFIG),
    };
    // The slow one sorts first, so that the quick ones are claimed after the restart.
    let slow = big_repo(&forge.root.join("0-slow"), 4, 1 << 20);
    forge.feed_row("0-slow", "0-slow", None, "now() - interval '1 hour'");
    let quick: Vec<String> = (0..5).map(|i| format!("quick{i}")).collect();
    for name in &quick {
        forge.add_repo(name);
    }

    let worker = forge.spawn_run(&["--jobs", "1", "--rate-limit", "1MiB"]);
    assert!(wait_for_stored_bytes(&forge.env.path("store"), 1 << 20), "the slow backup did not get going");
    forge.cluster.stop();
    std::thread::sleep(Duration::from_secs(1));
    forge.cluster.start_again();
    let out = finish(worker);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains(PASSWORD), "the password leaked: {all}");
    match code(&out) {
        0 => {}
        1 => assert!(
            stderr(&out).contains("127.0.0.1") || stderr(&out).contains("forge"),
            "a run that gives up names the database: {all}"
        ),
        other => panic!("the run across a restart exited {other}: {all}"),
    }

    // The next night completes whatever is left; nothing is backed up twice.
    let next = forge.run(&[]);
    assert_eq!(code(&next), 0, "{}{}", stdout(&next), stderr(&next));
    let mut expected: Vec<(&str, usize)> = quick.iter().map(|n| (n.as_str(), 1)).collect();
    expected.push(("0-slow", 1));
    forge.assert_snapshots(&expected);
    assert_restores(&forge, "0-slow", &slow);
}

#[test]
fn server_restarted_mid_run_then_the_next_run_completes_the_work_direct() {
    server_restarted_mid_run_then_the_next_run_completes_the_work(Via::Direct);
}

#[test]
fn server_restarted_behind_pgbouncer_mid_run_then_the_next_run_completes_the_work() {
    server_restarted_mid_run_then_the_next_run_completes_the_work(Via::Pgbouncer);
}

#[test]
fn database_down_past_database_retry_finishes_in_flight_backups_and_exits_1_naming_it() {
    const PASSWORD: &str = "Gone-Pw-31337";
    let cluster = PgCluster::start();
    let url = cluster.create_db_with_password("forge", PASSWORD);
    let admin = cluster.url("forge");
    let mut forge = Forge::build(cluster, None, admin, url, "claim_lease = '5s'\ndatabase_retry = '3s'");
    let slow = big_repo(&forge.root.join("0-slow"), 4, 1 << 20);
    forge.feed_row("0-slow", "0-slow", None, "now() - interval '1 hour'");
    let quick: Vec<String> = (0..3).map(|i| format!("quick{i}")).collect();
    for name in &quick {
        forge.add_repo(name);
    }

    let worker = forge.spawn_run(&["--jobs", "1", "--rate-limit", "1MiB"]);
    assert!(wait_for_stored_bytes(&forge.env.path("store"), 1 << 20), "the slow backup did not get going");
    forge.cluster.stop();
    let out = finish(worker);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(code(&out), 1, "{all}");
    assert!(stderr(&out).contains("127.0.0.1"), "the run names the database it lost: {all}");
    assert!(!all.contains(PASSWORD), "the password leaked: {all}");
    // The backup in flight finished; nothing new was claimed.
    let mut expected: Vec<(&str, usize)> = quick.iter().map(|n| (n.as_str(), 0)).collect();
    expected.push(("0-slow", 1));
    forge.assert_snapshots(&expected);

    // Back up: the next night does the rest, and the slow one is not stored twice.
    forge.cluster.start_again();
    let next = forge.run(&[]);
    assert_eq!(code(&next), 0, "{}{}", stdout(&next), stderr(&next));
    let expected: Vec<(&str, usize)> = quick.iter().map(|n| (n.as_str(), 1)).chain([("0-slow", 1)]).collect();
    forge.assert_snapshots(&expected);
    assert_restores(&forge, "0-slow", &slow);
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[test]
fn hostile_feed_rows_are_refused_and_the_others_backed_up() {
    let forge = Forge::new(Via::Direct);
    forge.add_repo("good-a");
    let good_b = new_repo(&forge.root.join("good-b"));
    commit_file(&good_b, "f", "b\n", "b");
    forge.feed_row("good-b", &good_b.to_string_lossy(), None, "now()");
    // Real repositories wherever the hostile rows point: only the refusal keeps them out.
    let evil = new_repo(&forge.root.join("evil"));
    commit_file(&evil, "f", "evil\n", "evil");
    let outside_rel = new_repo(&forge.env.path("outside-rel"));
    commit_file(&outside_rel, "f", "outside\n", "outside");
    let outside_abs = new_repo(&forge.env.path("outside-abs"));
    commit_file(&outside_abs, "f", "outside\n", "outside");
    let hostile = [
        ("team/../dotdot", "evil".to_owned()),
        ("/absolute-name", "evil".to_owned()),
        ("escapes-relative", "../outside-rel".to_owned()),
        ("escapes-absolute", outside_abs.to_string_lossy().into_owned()),
    ];
    for (name, path) in &hostile {
        forge.feed_row(name, path, None, "now()");
    }

    let out = forge.run(&[]);
    assert_eq!(code(&out), 1, "hostile rows make the run exit 1: {}{}", stdout(&out), stderr(&out));
    let night = summary(&out);
    assert_eq!(count(&night, "backed_up"), 2, "{night}");
    assert_eq!(count(&night, "refused"), 4, "{night}");
    let refused = night["refused_repos"].to_string();
    for (name, _) in &hostile {
        assert!(refused.contains(name), "{name} is listed as refused: {night}");
        assert!(stderr(&out).contains(name), "{name} is named on stderr: {}", stderr(&out));
    }
    let counts = forge.snapshots();
    assert_eq!(counts.len(), 2, "only the good rows are in the store: {counts:?}");
    forge.assert_snapshots(&[("good-a", 1), ("good-b", 1)]);
}

fn assert_one_line_exit_2_without(out: &Output, secret: &str, what: &str) {
    let all = format!("{}{}", stdout(out), stderr(out));
    assert_eq!(code(out), 2, "{what}: {all}");
    assert!(!all.contains(secret), "{what}: the password leaked: {all}");
    assert_eq!(stderr(out).trim().lines().count(), 1, "{what}: one line: {}", stderr(out));
    assert!(!stderr(out).contains("panicked"), "{what}: {all}");
    assert!(stderr(out).contains("127.0.0.1"), "{what}: the line names the database: {all}");
}

#[test]
fn database_down_at_start_is_exit_2_in_one_line_without_the_password() {
    const PASSWORD: &str = "Down-Pw-90210";
    let env = Env::new();
    env.init_store();
    let port = free_port();
    let url = format!("postgres://someone:{PASSWORD}@127.0.0.1:{port}/forge");
    let conninfo = format!("host=127.0.0.1 port={port} user=someone password={PASSWORD} dbname=forge");
    for database in [&url, &conninfo] {
        for command in ["run", "lag", "migrate"] {
            let out = env.rv(&[command, "--database-url", database]);
            assert_one_line_exit_2_without(&out, PASSWORD, &format!("{command} with the server down"));
        }
    }
    // From DATABASE_URL too.
    let out = env.rv_command(&["run"]).env("DATABASE_URL", &url).output().unwrap();
    assert_one_line_exit_2_without(&out, PASSWORD, "run with DATABASE_URL and the server down");
}

#[test]
fn wrong_credentials_at_start_are_exit_2_in_one_line_without_the_password() {
    const RIGHT: &str = "Right-Pw-1234";
    const WRONG: &str = "Wrong-Pw-5678";
    let cluster = PgCluster::start();
    let right = cluster.create_db_with_password("forge", RIGHT);
    let env = Env::new();
    env.init_store();
    let migrated = env.rv(&["migrate", "--database-url", &right]);
    assert_eq!(code(&migrated), 0, "{}", stderr(&migrated));
    assert!(!format!("{}{}", stdout(&migrated), stderr(&migrated)).contains(RIGHT));

    let wrong = cluster.url_as(PASSWORD_ROLE, WRONG, "forge");
    for command in ["run", "lag", "migrate"] {
        let out = env.rv(&[command, "--database-url", &wrong]);
        assert_one_line_exit_2_without(&out, WRONG, &format!("{command} with a wrong password"));
        let out = env.rv(&["--log-format", "json", command, "--database-url", &wrong]);
        assert_one_line_exit_2_without(&out, WRONG, &format!("{command} --log-format json with a wrong password"));
    }
}

#[test]
fn run_on_a_database_not_migrated_says_to_migrate() {
    let cluster = PgCluster::start();
    let url = cluster.create_db("empty");
    let env = Env::new();
    env.init_store();
    for command in ["run", "lag"] {
        let out = env.rv(&[command, "--database-url", &url]);
        assert_eq!(code(&out), 2, "{command}: {}{}", stdout(&out), stderr(&out));
        assert!(stderr(&out).contains("repovault migrate"), "{command} says what to do: {}", stderr(&out));
    }
}

#[test]
fn feed_query_missing_a_column_is_exit_2_naming_it() {
    let forge = Forge::with_config(
        Via::Direct,
        "feed_query = 'SELECT name, path, changed_at FROM repovault.repositories WHERE changed_at > $1'",
    );
    forge.add_repo("a");
    for command in ["run", "lag"] {
        let out = forge.rv(&[command, "--database-url", &forge.url]);
        assert_eq!(code(&out), 2, "{command}: {}{}", stdout(&out), stderr(&out));
        assert!(stderr(&out).contains("vcs"), "{command} names the missing column: {}", stderr(&out));
    }
    forge.assert_snapshots(&[("a", 0)]);
}

// ---------------------------------------------------------------------------------------------
// lag from the database

fn lag_of(report: &Value, name: &str) -> (i64, Value) {
    let repo = report["repos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repo"] == name)
        .unwrap_or_else(|| panic!("{name} not in the lag report {report}"));
    (repo["lag_seconds"].as_i64().unwrap(), repo["backed_up_change_at"].clone())
}

#[test]
fn lag_from_the_database_follows_the_contract() {
    let forge = Forge::new(Via::Direct);
    forge.add_repo("fresh");
    forge.add_repo("bumped");
    let before_run = Instant::now();
    forge.run_ok(&[]);
    let after_run = Instant::now();

    let lag = |extra: &[&str]| -> Output {
        let mut args = vec!["lag", "--database-url", &forge.url, "--json"];
        args.extend(extra);
        forge.rv(&args)
    };
    // Right after the run: nothing is missing.
    let out = lag(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = summary(&out);
    assert_eq!(lag_of(&report, "fresh").0, 0, "{report}");
    assert_eq!(lag_of(&report, "bumped").0, 0, "{report}");
    assert_eq!(count(&report, "max_lag_seconds"), 0, "{report}");

    // A push after the snapshot: lag is the time since the snapshot, not since the push. A
    // repository never backed up: the time since it changed (half an hour).
    std::thread::sleep(Duration::from_secs(2));
    forge.sql("UPDATE repovault.repositories SET changed_at = now() WHERE name = 'bumped'");
    let never = new_repo(&forge.root.join("never"));
    commit_file(&never, "f", "never\n", "never");
    forge.feed_row("never", "never", None, "now() - interval '30 minutes'");
    let report_start = Instant::now();
    let out = lag(&["--max-lag", "10m", "--prometheus", &forge.env.path("lag.prom").to_string_lossy()]);
    let report_end = Instant::now();
    assert_eq!(code(&out), 4, "a repository above --max-lag: {}{}", stdout(&out), stderr(&out));
    let report = summary(&out);
    let (bumped, bumped_change) = lag_of(&report, "bumped");
    let earliest = (report_start - after_run).as_secs() as i64 - 1;
    let latest = (report_end - before_run).as_secs() as i64 + 1;
    assert!(bumped >= 2 && (earliest..=latest).contains(&bumped), "lag since the snapshot, {bumped}: {report}");
    assert!(!bumped_change.is_null(), "{report}");
    let (never_lag, never_change) = lag_of(&report, "never");
    assert!((1795..=1800 + latest).contains(&never_lag), "lag since changed_at, {never_lag}: {report}");
    assert!(never_change.is_null(), "never backed up: {report}");
    assert_eq!(lag_of(&report, "fresh").0, 0, "{report}");
    assert_eq!(count(&report, "stale"), 1, "{report}");
    let metrics = std::fs::read_to_string(forge.env.path("lag.prom")).expect("the prometheus file");
    assert!(metrics.contains("repovault_"), "{metrics}");

    let relaxed = lag(&["--max-lag", "2h"]);
    assert_eq!(code(&relaxed), 0, "{}", stderr(&relaxed));
}

// ---------------------------------------------------------------------------------------------
// Failures

#[test]
fn failed_repository_is_retried_next_night_even_if_the_feed_no_longer_lists_it() {
    let forge = Forge::new(Via::Direct);
    forge.add_repo("fine");
    let broken = new_repo(&forge.root.join("broken"));
    commit_file(&broken, "f", "broken\n", "broken");
    forge.sql("INSERT INTO repovault.repositories VALUES ('broken', 'broken', 'git', now(), NULL)");
    // Take the tip's tree away so that the backup cannot read the history; keep it to repair.
    let tree = git(&broken, &["rev-parse", "HEAD^{tree}"]).trim().to_owned();
    let object = git_dir(&broken).join("objects").join(&tree[..2]).join(&tree[2..]);
    let saved = std::fs::read(&object).unwrap();
    std::fs::remove_file(&object).unwrap();

    let out = forge.run(&[]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let night1 = summary(&out);
    assert_eq!(count(&night1, "failed"), 1, "{night1}");
    assert_eq!(night1["failed_repos"][0]["repo"], "broken", "{night1}");
    forge.assert_snapshots(&[("fine", 1), ("broken", 0)]);

    // Repaired during the day, and the feed no longer lists it.
    std::fs::write(&object, saved).unwrap();
    forge.sql("DELETE FROM repovault.repositories WHERE name = 'broken'");
    let night2 = forge.run_ok(&[]);
    assert_eq!(count(&night2, "backed_up"), 1, "{night2}");
    forge.assert_snapshots(&[("fine", 1), ("broken", 1)]);
    assert_restores(&forge, "broken", &broken);
}

#[test]
fn dry_run_lists_the_night_and_changes_nothing_and_run_writes_the_prometheus_file() {
    let forge = Forge::new(Via::Direct);
    forge.add_repo("a");
    forge.add_repo("b");
    let out = forge.rv(&["run", "--database-url", &forge.url, "--dry-run"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed = stdout(&out);
    assert!(listed.contains("would back up a\n") && listed.contains("would back up b\n"), "{listed}");
    for table in ["nights", "workers", "feed_cursor", "queue", "results"] {
        assert_eq!(forge.sql(&format!("SELECT count(*) FROM repovault.{table}")), "0", "{table} untouched");
    }
    assert_eq!(forge.snapshots().len(), 0, "nothing backed up");

    let prom = forge.env.path("repovault.prom");
    let night = forge.run_ok(&["--prometheus", &prom.to_string_lossy()]);
    assert_eq!(count(&night, "backed_up"), 2, "{night}");
    let text = std::fs::read_to_string(&prom).expect("run --database-url --prometheus writes the file");
    assert!(text.contains("repovault_lag_seconds{repo=\"a\"} 0"), "{text}");
    assert!(text.contains("repovault_max_lag_seconds 0"), "{text}");

    let out = forge.rv(&["run", "--database-url", &forge.url, "--dry-run"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!stdout(&out).contains("would back up"), "nothing left to do: {}", stdout(&out));
}

/// The least a DBA grants: a role that owns the schema `repovault` and has no CREATE on the
/// database can migrate, again and again.
#[test]
fn a_role_owning_only_the_schema_can_migrate() {
    let cluster = PgCluster::start();
    let admin = cluster.create_db("forge");
    psql(&admin, "CREATE ROLE rvowner LOGIN; CREATE SCHEMA repovault AUTHORIZATION rvowner");
    let url = format!("postgres://rvowner@127.0.0.1:{}/forge", cluster.port());
    let env = Env::new();
    for attempt in ["first", "second"] {
        let out = env.rv(&["migrate", "--database-url", &url]);
        assert_eq!(code(&out), 0, "{attempt} migrate as the schema's owner: {}", stderr(&out));
    }
    assert_eq!(psql(&admin, "SELECT has_database_privilege('rvowner', 'forge', 'CREATE')"), "f");
    assert_eq!(psql(&admin, "SELECT count(*) > 0 FROM repovault.schema_version"), "t");
}

/// A worker killed after it wrote a snapshot and before it recorded it: the worker that takes
/// the claim over finds the refs as that snapshot holds them, and the night counts the
/// repository as backed up (by the snapshot the dead worker wrote), not as unchanged.
#[test]
fn a_snapshot_written_by_a_worker_killed_before_recording_it_counts_as_backed_up() {
    let forge = Forge::new(Via::Direct);
    let repo = forge.add_repo("r");
    forge.sql(
        "INSERT INTO repovault.nights (id) VALUES (1);
         INSERT INTO repovault.workers (id, night_id, host, pid, heartbeat)
             VALUES (1, 1, 'gone', 1, now() - interval '1 hour');
         INSERT INTO repovault.queue (name, path, vcs, changed_at, claimed_by, lease_until, attempts)
             VALUES ('r', 'r', 'git', now() - interval '1 hour', 1, now() - interval '1 minute', 1);
         SELECT setval('repovault.nights_id_seq', 1); SELECT setval('repovault.workers_id_seq', 1)",
    );
    // The dead worker's snapshot, written before it died.
    let written = forge.env.backup("r", &repo);

    let night = forge.run_ok(&[]);
    assert_eq!(count(&night, "backed_up"), 1, "{night}");
    assert_eq!(count(&night, "unchanged"), 0, "{night}");
    assert_eq!(forge.sql("SELECT snapshot_id FROM repovault.results WHERE name = 'r'"), written);
    forge.assert_snapshots(&[("r", 1)]);
    forge.assert_all_fresh(&["r"]);
}

/// A feed row with `vcs = 'hg'` is a Mercurial repository like any other: backed up when the
/// feed says it changed, and only then; restored; fresh in `lag`.
#[test]
fn a_mercurial_repository_in_the_feed_is_backed_up_like_a_git_one() {
    let forge = Forge::new(Via::Direct);
    forge.add_repo("app");
    let docs = hg::HgRepo::empty(&forge.root.join("docs"));
    docs.commit("a", "one", &[]);
    forge.sql(
        "INSERT INTO repovault.repositories (name, path, vcs, changed_at) VALUES ('docs', 'docs', 'hg', now() - interval '1 hour')",
    );
    let night1 = forge.run_ok(&[]);
    assert_eq!(count(&night1, "backed_up"), 2, "{night1}");
    forge.assert_snapshots(&[("app", 1), ("docs", 1)]);
    let listed = forge.env.rv(&["snapshots", "docs", "--json"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("\"vcs\": \"hg\""), "{}", stdout(&listed));

    docs.commit("a", "two", &[]);
    forge.sql("UPDATE repovault.repositories SET changed_at = now() WHERE name = 'docs'");
    let night2 = forge.run_ok(&[]);
    assert_eq!(count(&night2, "backed_up"), 1, "{night2}");
    forge.assert_snapshots(&[("app", 1), ("docs", 2)]);
    forge.assert_all_fresh(&["app", "docs"]);

    let restored = forge.env.path("restored-docs");
    forge.env.restore("docs", &restored, None);
    let log = |repo: &Path| hg::hg(repo, &["log", "-T", "{node} {phase}\\n"]);
    assert_eq!(log(&restored), log(&docs.path));
}

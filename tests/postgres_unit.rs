//! Quick checks of the database side against a throwaway PostgreSQL 15 cluster (the
//! black-box suite is tests/postgres.rs). Skipped with a notice when the machine has no
//! PostgreSQL 15 binaries.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::*;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A cluster in a short temp dir owned by `postgres`, on a Unix socket only; stopped on drop.
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn start() -> Option<Cluster> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            eprintln!("no PostgreSQL 15 here: skipped");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("rvpg").tempdir_in("/tmp").unwrap().keep();
        let as_postgres = |args: &[&str]| {
            let out = Command::new("runuser").args(["-u", "postgres", "--"]).args(args).output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        Command::new("chown").arg("postgres").arg(&dir).status().unwrap();
        let data = dir.join("data");
        as_postgres(&[&format!("{PG_BIN}/initdb"), "-A", "trust", "--no-sync", "-D", data.to_str().unwrap()]);
        let options = format!("-c fsync=off -k {} -c listen_addresses=''", dir.display());
        let log = dir.join("log");
        as_postgres(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-o",
            &options,
            "-w",
            "start",
        ]);
        Some(Cluster { dir })
    }

    fn url(&self) -> String {
        format!("postgresql:///postgres?host={}&user=postgres", self.dir.display())
    }

    fn psql(&self, sql: &str) -> String {
        let out =
            Command::new("psql").args([&self.url(), "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql]).output().unwrap();
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{PG_BIN}/pg_ctl"),
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A bare repository under `root` with one commit; returns its path.
fn bare_repo(env: &Env, root: &Path, name: &str) -> PathBuf {
    let work = new_repo(&env.path(&format!("work/{name}")));
    commit_file(&work, "f", name, "first");
    let bare = root.join(name);
    git(env.dir.path(), &["clone", "-q", "--bare", work.to_str().unwrap(), bare.to_str().unwrap()]);
    bare
}

fn config(env: &Env, root: &Path, extra: &str) -> String {
    let path = env.path("config.toml");
    std::fs::write(
        &path,
        format!("repos_root = \"{}\"\nclaim_lease = \"3s\"\nfeed_margin = \"0s\"\n{extra}", root.display()),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn run_json(env: &Env, config: &str, url: &str, extra: &[&str]) -> (Output, serde_json::Value) {
    let mut args = vec!["--config", config, "run", "--database-url", url, "--json"];
    args.extend_from_slice(extra);
    let out = env.rv(&args);
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, json)
}

#[test]
fn migrate_is_idempotent_and_run_refuses_an_unmigrated_database() {
    let Some(pg) = Cluster::start() else { return };
    let env = Env::new();
    env.init_store();
    let out = env.rv(&["run", "--database-url", &pg.url()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("run repovault migrate"), "{}", stderr(&out));
    let first = env.rv_ok(&["migrate", "--database-url", &pg.url()]);
    assert!(first.contains("applied migration 1"), "{first}");
    let second = env.rv_ok(&["migrate", "--database-url", &pg.url()]);
    assert!(second.contains("schema up to date at version"), "{second}");
    assert_eq!(pg.psql("SELECT count(*) FROM repovault.schema_version"), "2");
}

#[test]
fn the_feed_drives_the_night_and_hostile_rows_are_refused_alone() {
    let Some(pg) = Cluster::start() else { return };
    let env = Env::new();
    env.init_store();
    let root = env.path("repos");
    for name in ["a.git", "b.git", "quiet.git"] {
        bare_repo(&env, &root, name);
    }
    env.rv_ok(&["migrate", "--database-url", &pg.url()]);
    let config = config(&env, &root, "");
    pg.psql(
        "INSERT INTO repovault.repositories (name, path, vcs, changed_at) VALUES
         ('a.git', 'a.git', 'git', now()), ('b.git', 'b.git', 'git', now()),
         ('../evil', 'a.git', 'git', now()), ('escape', '../../etc', 'git', now()),
         ('outside', '/etc', 'git', now())",
    );
    let (out, night) = run_json(&env, &config, &pg.url(), &[]);
    assert_eq!(code(&out), 1, "refused rows fail the night: {}", stderr(&out));
    assert_eq!(night["backed_up"], 2, "{night}");
    assert_eq!(night["refused"], 3, "{night}");
    assert!(night["night_id"].is_i64() && night["worker_id"].is_i64(), "{night}");
    assert_eq!(pg.psql("SELECT string_agg(name, ',' ORDER BY name) FROM repovault.state"), "a.git,b.git");

    // A repository changed on disk but not in the feed is untouched; a feed change is seen.
    pg.psql("DELETE FROM repovault.repositories WHERE name NOT IN ('a.git', 'b.git')");
    commit_file(&env.path("work/quiet.git"), "f", "2", "second");
    pg.psql("UPDATE repovault.repositories SET changed_at = now() WHERE name = 'b.git'");
    let (out, night) = run_json(&env, &config, &pg.url(), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(night["examined"], 1, "only b.git changed in the feed: {night}");
    assert_eq!(night["unchanged"], 1, "its refs did not change: {night}");
    assert_eq!(pg.psql("SELECT count(*) FROM repovault.state WHERE name = 'quiet.git'"), "0");
}

#[test]
fn three_workers_back_up_each_repository_exactly_once() {
    let Some(pg) = Cluster::start() else { return };
    let env = Env::new();
    env.init_store();
    let root = env.path("repos");
    env.rv_ok(&["migrate", "--database-url", &pg.url()]);
    for i in 0..12 {
        let name = format!("r{i}.git");
        bare_repo(&env, &root, &name);
        pg.psql(&format!(
            "INSERT INTO repovault.repositories VALUES ('{name}', '{name}', 'git', now(), 'nfs{}')",
            i % 2
        ));
    }
    let config = config(&env, &root, "jobs_per_storage = 1\n");
    let workers: Vec<_> = (0..3)
        .map(|_| {
            env.rv_command(&["--config", &config, "run", "--database-url", &pg.url(), "--jobs", "2", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for worker in workers {
        let out = worker.wait_with_output().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    assert_eq!(
        pg.psql("SELECT count(*), count(DISTINCT name) FROM repovault.results WHERE outcome = 'backed_up'"),
        "12|12"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM repovault.queue"), "0");
}

#[test]
fn a_feed_query_missing_a_column_is_named() {
    let Some(pg) = Cluster::start() else { return };
    let env = Env::new();
    env.init_store();
    env.rv_ok(&["migrate", "--database-url", &pg.url()]);
    let root = env.path("repos");
    let config = config(
        &env,
        &root,
        "feed_query = \"SELECT name, vcs, changed_at FROM repovault.repositories WHERE changed_at > $1\"\n",
    );
    let out = env.rv(&["--config", &config, "run", "--database-url", &pg.url()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("no column `path`"), "{}", stderr(&out));
}

#[test]
fn an_unreachable_database_is_one_line_without_the_password() {
    let env = Env::new();
    env.init_store();
    let out = env.rv(&["run", "--database-url", "postgresql://backup:hunter2secret@127.0.0.1:1/forge"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains("hunter2secret"), "{err}");
    assert!(err.contains("127.0.0.1:1/forge"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn lag_from_the_database_follows_the_state() {
    let Some(pg) = Cluster::start() else { return };
    let env = Env::new();
    env.init_store();
    let root = env.path("repos");
    bare_repo(&env, &root, "a.git");
    env.rv_ok(&["migrate", "--database-url", &pg.url()]);
    let config = config(&env, &root, "");
    pg.psql(
        "INSERT INTO repovault.repositories VALUES ('a.git', 'a.git', 'git', now(), NULL),
         ('never.git', 'never.git', 'git', now() - interval '2 hours', NULL)",
    );
    run_json(&env, &config, &pg.url(), &[]);
    let out = env.rv(&["--config", &config, "lag", "--database-url", &pg.url(), "--json", "--max-lag", "1h"]);
    assert_eq!(code(&out), 4, "never.git is stale: {}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lag = |name: &str| report["repos"].as_array().unwrap().iter().find(|r| r["repo"] == name).unwrap().clone();
    assert_eq!(lag("a.git")["lag_seconds"], 0, "{report}");
    assert!(lag("never.git")["lag_seconds"].as_i64().unwrap() >= 7200, "{report}");
    assert!(lag("never.git")["backed_up_change_at"].is_null(), "{report}");
    assert_eq!(report["stale"], 1, "{report}");
}

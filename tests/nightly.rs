//! The nightly job over a tree of generated repositories: scan, change detection, failure
//! isolation, overlapping and killed runs, and the freshness report.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;

const REPOS: usize = 200;

/// A forge-like tree: nested groups, bare and non-bare repositories, all distinct.
struct Forge {
    env: Env,
    root: PathBuf,
    names: Vec<String>,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

impl Forge {
    fn new() -> Forge {
        let env = Env::new();
        env.init_store();
        let root = env.path("forge");
        let template = new_repo(&env.path("template"));
        for i in 0..3 {
            commit_file(&template, &format!("src/f{i}.rs"), &format!("fn f{i}() {{}}\n"), &format!("c{i}"));
        }
        git(&template, &["tag", "-a", "v1", "-m", "v1"]);
        let bare_template = env.path("template.git");
        git(env.dir.path(), &["clone", "-q", "--bare", &template.to_string_lossy(), &bare_template.to_string_lossy()]);
        let mut names = Vec::new();
        for i in 0..REPOS {
            let name = if i % 2 == 0 {
                format!("group{}/sub{}/repo{i}.git", i % 7, i % 3)
            } else {
                format!("group{}/repo{i}", i % 5)
            };
            let path = root.join(&name);
            if i % 2 == 0 {
                copy_dir(&bare_template, &path);
            } else {
                copy_dir(&template, &path);
                // Make every working copy distinct.
                commit_file(&path, "id", &format!("{i}\n"), "identity");
            }
            names.push(name);
        }
        // A symlink loop and an unrelated directory must not disturb the scan.
        std::fs::create_dir_all(root.join("misc/docs")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("misc/loop")).unwrap();
        names.sort();
        Forge { env, root, names }
    }

    fn run(&self, extra: &[&str]) -> Output {
        let mut args = vec!["run", "--scan", self.root.to_str().unwrap()];
        args.extend(extra);
        self.env.rv(&args)
    }

    fn spawn_run(&self, extra: &[&str]) -> Child {
        self.env
            .rv_command(&["run", "--scan", self.root.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Snapshots of `name`; 0 when the store has none (`snapshots NAME` then says it is not
    /// in the store, exit 2).
    fn snapshots_of(&self, name: &str) -> usize {
        let out = self.env.rv(&["snapshots", name, "--json"]);
        if code(&out) == 2 && stderr(&out).contains("not in store") {
            return 0;
        }
        assert!(out.status.success(), "snapshots {name}: {}", stderr(&out));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap().len()
    }

    fn all_snapshots(&self) -> usize {
        snapshot_count(&self.env.path("store"))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of a summary line such as "  backed up   5".
fn summary(out: &Output, label: &str) -> u64 {
    let text = stdout(out);
    let line =
        text.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("no {label:?} in {text}"));
    line.trim_start()[label.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

fn corrupt(repo: &Path) {
    // Remove every loose blob-bearing object so the history cannot be read.
    let objects = git_dir(repo).join("objects");
    let tip = git(repo, &["rev-parse", "HEAD^{tree}"]).trim().to_owned();
    std::fs::remove_file(objects.join(&tip[..2]).join(&tip[2..])).unwrap();
}

#[test]
fn nights_back_up_what_changed_and_isolate_failures() {
    let forge = Forge::new();
    let broken = forge.names.iter().find(|n| !n.ends_with(".git")).unwrap().clone();
    corrupt(&forge.path(&broken));

    // Night one: everything but the corrupt repository.
    let night1 = forge.run(&["--jobs", "2"]);
    assert_eq!(code(&night1), 1, "{}{}", stdout(&night1), stderr(&night1));
    assert_eq!(summary(&night1, "examined"), REPOS as u64);
    assert_eq!(summary(&night1, "backed up"), REPOS as u64 - 1);
    assert_eq!(summary(&night1, "failed"), 1);
    assert!(stderr(&night1).contains(&broken), "the failure names the repository: {}", stderr(&night1));
    assert_eq!(forge.all_snapshots(), REPOS - 1);
    assert_eq!(forge.snapshots_of(&broken), 0);

    // The day: five repositories get pushes, one is deleted, the broken one is repaired.
    let changed: Vec<String> = forge.names.iter().filter(|n| **n != broken).step_by(37).take(5).cloned().collect();
    assert_eq!(changed.len(), 5);
    for name in &changed {
        let path = forge.path(name);
        if name.ends_with(".git") {
            let tree = git(&path, &["rev-parse", "HEAD^{tree}"]).trim().to_owned();
            let commit = git(&path, &["commit-tree", "-p", "HEAD", "-m", "pushed", &tree]).trim().to_owned();
            git(&path, &["update-ref", "refs/heads/main", &commit]);
        } else {
            commit_file(&path, "pushed", "new\n", "pushed");
        }
    }
    let deleted = forge.names.iter().rev().find(|n| !changed.contains(n) && **n != broken).unwrap().clone();
    std::fs::remove_dir_all(forge.path(&deleted)).unwrap();
    std::fs::remove_dir_all(forge.path(&broken)).unwrap();

    // Night two: exactly those five.
    let before = forge.all_snapshots();
    let night2 = forge.run(&[]);
    assert_eq!(code(&night2), 0, "{}{}", stdout(&night2), stderr(&night2));
    assert_eq!(summary(&night2, "changed"), 5, "{}", stdout(&night2));
    assert_eq!(summary(&night2, "backed up"), 5);
    assert_eq!(summary(&night2, "unchanged"), REPOS as u64 - 7);
    assert_eq!(summary(&night2, "gone"), 1);
    assert!(stdout(&night2).contains(&format!("gone: {deleted}")), "{}", stdout(&night2));
    assert_eq!(forge.all_snapshots(), before + 5);
    for name in &changed {
        assert_eq!(forge.snapshots_of(name), 2, "{name}");
    }
    assert_eq!(forge.snapshots_of(&deleted), 1, "a deleted repository keeps its snapshots");
    assert_eq!(code(&forge.env.rv(&["verify"])), 0);

    // The deleted repository restores from the store alone.
    let dest = forge.env.path("restored");
    forge.env.restore(&deleted, &dest, None);
    fsck(&dest);
}

#[test]
fn dry_run_lists_and_changes_nothing() {
    let forge = Forge::new();
    let out = forge.run(&["--dry-run"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().filter(|l| l.starts_with("would back up ")).count(), REPOS);
    assert_eq!(forge.all_snapshots(), 0);
    assert!(!forge.env.path("store/locks/run").exists());
}

/// A run slowed down by the rate limit, so that another can start while it goes.
fn slow_forge() -> Forge {
    let forge = Forge::new();
    // Some incompressible megabytes so that a low rate limit makes the run take a while.
    let big = forge.path(forge.names.iter().find(|n| !n.ends_with(".git")).unwrap());
    let data = noise_bytes(7, 2_000_000);
    std::fs::write(big.join("big.bin"), data).unwrap();
    git(&big, &["add", "-A"]);
    git(&big, &["commit", "-q", "-m", "big"]);
    forge
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn overlapping_run_exits_0_and_a_killed_run_is_completed_by_the_next() {
    let forge = slow_forge();
    let mut first = forge.spawn_run(&["--rate-limit", "500K", "--jobs", "1"]);
    wait_for(&forge.env.path("store/locks/run"));

    let overlapping = forge.run(&[]);
    assert_eq!(code(&overlapping), 0, "{}", stderr(&overlapping));
    assert!(stderr(&overlapping).contains("another run"), "{}", stderr(&overlapping));

    first.kill().unwrap(); // SIGKILL: the lock stays behind
    first.wait().unwrap();
    assert!(forge.env.path("store/locks/run").exists(), "a killed run leaves its lock");
    let partial = forge.all_snapshots();
    assert!(partial < REPOS, "the first run was killed before it finished ({partial})");

    // The dead holder's lock is taken over; everything not yet stored is backed up.
    let second = forge.run(&[]);
    assert_eq!(code(&second), 0, "{}{}", stdout(&second), stderr(&second));
    assert_eq!(summary(&second, "backed up"), (REPOS - partial) as u64);
    assert_eq!(forge.all_snapshots(), REPOS);
    assert!(!forge.env.path("store/locks/run").exists(), "a finished run releases the lock");
    assert_eq!(code(&forge.env.rv(&["verify"])), 0);
}

#[test]
fn rate_limit_slows_reading() {
    let forge = slow_forge();
    let start = Instant::now();
    let out = forge.run(&["--rate-limit", "1MiB"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Over 2 MB read at 1 MiB/s with a one-second burst: at least about one second.
    assert!(start.elapsed() >= Duration::from_millis(900), "{:?}", start.elapsed());
    let bad = forge.run(&["--rate-limit", "fast"]);
    assert_eq!(code(&bad), 2);
}

#[test]
fn lag_reports_stale_repositories_and_writes_a_prometheus_file() {
    let forge = Forge::new();
    assert_eq!(code(&forge.run(&[])), 0);
    let scan = forge.root.to_string_lossy().into_owned();

    let fresh = forge.env.rv(&["lag", "--scan", &scan, "--max-lag", "1h", "--json"]);
    assert_eq!(code(&fresh), 0, "{}", stderr(&fresh));
    let report: serde_json::Value = serde_json::from_slice(&fresh.stdout).unwrap();
    assert_eq!(report["stale"], 0);
    assert_eq!(report["max_lag_seconds"], 0);
    assert_eq!(report["repos"].as_array().unwrap().len(), REPOS);

    // A push that is not backed up yet, two seconds after the snapshot.
    std::thread::sleep(Duration::from_millis(2100));
    let pushed = forge.names.iter().find(|n| !n.ends_with(".git")).unwrap();
    commit_file(&forge.path(pushed), "later", "x\n", "later");
    let prom = forge.env.path("textfile/repovault.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let stale =
        forge.env.rv(&["lag", "--scan", &scan, "--max-lag", "1s", "--json", "--prometheus", &prom.to_string_lossy()]);
    assert_eq!(code(&stale), 4, "{}", stderr(&stale));
    let report: serde_json::Value = serde_json::from_slice(&stale.stdout).unwrap();
    assert_eq!(report["stale"], 1);
    for field in ["max_lag_seconds", "p50_lag_seconds", "p99_lag_seconds"] {
        assert!(report[field].is_i64(), "{field}");
    }
    let entry = report["repos"].as_array().unwrap().iter().find(|r| r["repo"] == pushed.as_str()).unwrap().clone();
    assert!(entry["lag_seconds"].as_i64().unwrap() >= 2, "{entry}");
    for field in ["repo", "changed_at", "backed_up_change_at", "lag_seconds"] {
        assert!(entry.get(field).is_some(), "{field} in {entry}");
    }

    let text = std::fs::read_to_string(&prom).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
        seen.insert(name.to_owned());
    }
    for metric in [
        "repovault_lag_seconds",
        "repovault_stale_repositories",
        "repovault_last_run_timestamp_seconds",
        "repovault_last_run_failed_repositories",
    ] {
        assert!(seen.contains(metric), "{metric} missing from\n{text}");
    }
    assert!(text.contains(&format!("repovault_lag_seconds{{repo=\"{pushed}\"}}")));
    assert!(text.contains("repovault_stale_repositories 1"));
    // Written atomically: no temporary file is left beside it.
    assert_eq!(std::fs::read_dir(prom.parent().unwrap()).unwrap().count(), 1);

    // A repository never backed up counts from its change.
    let never = new_repo(&forge.root.join("brand-new"));
    commit_file(&never, "f", "x", "c");
    let out = forge.env.rv(&["lag", "--scan", &scan, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = report["repos"].as_array().unwrap().iter().find(|r| r["repo"] == "brand-new").unwrap().clone();
    assert_eq!(entry["backed_up_change_at"], serde_json::Value::Null);
}

#[test]
fn json_logs_give_one_line_per_repository_result() {
    let forge = Forge::new();
    let out = forge.env.rv(&["--log-format", "json", "run", "--scan", forge.root.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let results: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .filter(|v| v["fields"]["result"].is_string())
        .collect();
    assert_eq!(results.len(), REPOS);
    assert!(results.iter().all(|r| r["fields"]["repo"].is_string() && r["fields"]["bytes_stored"].is_u64()));
}

#[test]
fn another_hosts_lock_is_respected_until_its_heartbeat_stops() {
    let forge = Forge::new();
    let lock = forge.env.path("store/locks/run");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(
        &lock,
        r#"{"host":"backup-02.example","pid":4242,"pid_start":1,"started_at":"2026-11-20T01:15:00Z"}"#,
    )
    .unwrap();

    let fresh = forge.run(&[]);
    assert_eq!(code(&fresh), 0, "{}", stderr(&fresh));
    assert!(
        stderr(&fresh).contains("another run") && stderr(&fresh).contains("backup-02.example"),
        "{}",
        stderr(&fresh)
    );
    assert_eq!(forge.all_snapshots(), 0, "nothing was touched");

    // Its heartbeat stopped an hour ago: the host is gone, the lock is stale.
    let file = std::fs::OpenOptions::new().write(true).open(&lock).unwrap();
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)).unwrap();
    drop(file);
    let takeover = forge.run(&[]);
    assert_eq!(code(&takeover), 0, "{}", stderr(&takeover));
    assert_eq!(forge.all_snapshots(), REPOS);
    assert!(!lock.exists());
}

//! What the on-call operator relies on: `run` and `lag` tell the truth. A damaged snapshot
//! fails its repository alone, lag means "how long the store has been missing a change",
//! an empty or unmounted scan root is not a quiet night, repositories left alone by design
//! are reported apart from failures, the systemd unit updates the dashboard after a failed
//! night, outputs survive closed pipes and full disks, and a read-only store is exit 2.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use common::*;
use serde_json::Value;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An env with an initialised store and a forge of small git repositories `names`.
fn forge(names: &[&str]) -> (Env, PathBuf) {
    let env = Env::new();
    env.init_store();
    let root = env.path("forge");
    std::fs::create_dir_all(&root).unwrap();
    for name in names {
        let repo = new_repo(&root.join(name));
        commit_file(&repo, "README", &format!("{name}\n"), "first");
    }
    (env, root)
}

fn run(env: &Env, root: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", "--scan", root.to_str().unwrap()];
    args.extend(extra);
    env.rv(&args)
}

fn lag(env: &Env, root: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["lag", "--scan", root.to_str().unwrap()];
    args.extend(extra);
    env.rv(&args)
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", stdout(out), stderr(out)))
}

fn entry<'a>(report: &'a Value, repo: &str) -> &'a Value {
    report["repos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repo"] == repo)
        .unwrap_or_else(|| panic!("{repo} in {report}"))
}

fn run_records(env: &Env) -> usize {
    std::fs::read_dir(env.path("store/runs"))
        .map(|d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count())
        .unwrap_or(0)
}

/// The newest snapshot file of `repo` in the store.
fn latest_snapshot_file(env: &Env, repo: &str) -> PathBuf {
    files_under(&env.path("store/snapshots"))
        .into_iter()
        .filter(|f| {
            std::fs::read(f)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v["repo"] == repo)
        })
        .max_by_key(|f| f.file_name().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no snapshot of {repo}"))
}

/// Sets the modification time of every ref file and ref directory (what the ref
/// fingerprint and "changed at" are made of) to `when` (`touch -d` syntax).
fn age_refs(repo: &Path, when: &str) {
    let git_dir = git_dir(repo);
    let mut paths = vec![git_dir.join("HEAD")];
    paths.extend(std::iter::once(git_dir.join("packed-refs")).filter(|p| p.exists()));
    let mut dirs = vec![git_dir.join("refs")];
    while let Some(dir) = dirs.pop() {
        paths.push(dir.clone());
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() { dirs.push(e.path()) } else { paths.push(e.path()) }
        }
    }
    let status = Command::new("touch").arg("-d").arg(when).args(&paths).status().unwrap();
    assert!(status.success());
}

/// Makes a repository unreadable: its tip tree object is removed.
fn corrupt(repo: &Path) {
    let objects = git_dir(repo).join("objects");
    let tree = git(repo, &["rev-parse", "HEAD^{tree}"]).trim().to_owned();
    std::fs::remove_file(objects.join(&tree[..2]).join(&tree[2..])).unwrap();
}

fn all_lines_are_json(text: &str) {
    for line in text.lines() {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(value.is_object(), "{line}");
    }
}

// 1. A damaged snapshot file fails its repository alone.

#[test]
fn a_damaged_latest_snapshot_fails_its_repository_alone_in_run_and_lag() {
    let (env, root) = forge(&["a", "b", "c"]);
    age_refs(&root.join("a"), "2 days ago");
    assert_eq!(code(&run(&env, &root, &[])), 0);
    std::fs::write(latest_snapshot_file(&env, "a"), "overwritten by a stray script\n").unwrap();
    commit_file(&root.join("b"), "later", "x\n", "push");

    let night = run(&env, &root, &["--json"]);
    assert_eq!(code(&night), 1, "{}{}", stdout(&night), stderr(&night));
    let result = json(&night);
    assert_eq!(result["backed_up"], 1, "the others are backed up: {result}");
    assert_eq!(result["unchanged"], 1, "{result}");
    assert_eq!(result["failed"], 1, "{result}");
    assert_eq!(result["failed_repos"][0]["repo"], "a", "{result}");
    assert!(stderr(&night).contains("repository a: "), "the error names the repository: {}", stderr(&night));
    assert_eq!(run_records(&env), 2, "the run is recorded");

    let prom = env.path("repovault.prom");
    let out = lag(&env, &root, &["--json", "--prometheus", prom.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "lag does not exit 0 while a snapshot is damaged: {}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["repos"].as_array().unwrap().len(), 3, "every repository is listed: {report}");
    assert_eq!(entry(&report, "a")["damaged"], true);
    assert_eq!(entry(&report, "b")["damaged"], false);
    assert_eq!(report["damaged"], 1);
    let a_lag = entry(&report, "a")["lag_seconds"].as_i64().unwrap();
    assert!(a_lag > 86_400, "a repository with a damaged latest snapshot does not look fresh: {a_lag}");
    assert!(stderr(&out).contains("repository a: "), "stderr names it: {}", stderr(&out));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("repovault_damaged{repo=\"a\"} 1"), "{text}");
    assert!(text.contains("repovault_damaged_repositories 1"), "{text}");

    let stale = lag(&env, &root, &["--max-lag", "26h"]);
    assert_eq!(code(&stale), 4, "stale wins over damaged: {}", stderr(&stale));
}

#[test]
fn a_deleted_repository_whose_snapshots_are_all_damaged_stops_neither_run_nor_lag() {
    let (env, root) = forge(&["a", "b", "c"]);
    assert_eq!(code(&run(&env, &root, &[])), 0);
    let file = latest_snapshot_file(&env, "c");
    let key = file.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(&file, "garbage").unwrap();
    std::fs::remove_dir_all(root.join("c")).unwrap();

    let night = run(&env, &root, &["--json"]);
    assert_eq!(code(&night), 0, "{}{}", stdout(&night), stderr(&night));
    let result = json(&night);
    assert_eq!(result["gone"], 1, "{result}");
    assert!(result["gone_repos"][0].as_str().unwrap().contains(&key), "named by its key: {result}");

    let out = lag(&env, &root, &["--json"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["gone"], 1);
    assert_eq!(report["damaged"], 1);
    assert!(stderr(&out).contains(&key), "{}", stderr(&out));
}

// 2. Lag: how long the store has been missing a change.

#[test]
fn a_push_after_the_snapshot_lags_seconds_not_the_months_since_the_previous_push() {
    let (env, root) = forge(&["quiet"]);
    let repo = root.join("quiet");
    age_refs(&repo, "113 days ago");
    assert_eq!(code(&run(&env, &root, &[])), 0);
    commit_file(&repo, "late", "x\n", "pushed after the night's snapshot");

    let out = lag(&env, &root, &["--json", "--max-lag", "26h"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let report = json(&out);
    let lag = entry(&report, "quiet")["lag_seconds"].as_i64().unwrap();
    assert!(lag < 3600, "lag counts from the snapshot, not from the previous push: {lag}");
    assert_eq!(report["stale"], 0);
}

#[test]
fn pack_refs_alone_is_no_lag() {
    let (env, root) = forge(&["quiet"]);
    let repo = root.join("quiet");
    git(&repo, &["tag", "v1"]);
    age_refs(&repo, "113 days ago");
    assert_eq!(code(&run(&env, &root, &[])), 0);
    git(&repo, &["pack-refs", "--all"]);

    let out = lag(&env, &root, &["--json", "--max-lag", "26h"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(entry(&json(&out), "quiet")["lag_seconds"], 0, "the snapshot holds the refs the source has");
}

// 3. An empty or unmounted root is not a quiet night.

#[test]
fn an_empty_scan_root_is_refused_unless_the_deletions_are_declared() {
    let (env, root) = forge(&["a", "b", "c"]);
    assert_eq!(code(&run(&env, &root, &[])), 0);
    let away = env.path("forge-away");
    std::fs::rename(&root, &away).unwrap();
    std::fs::create_dir(&root).unwrap();
    let root_text = root.to_string_lossy().into_owned();

    let night = run(&env, &root, &[]);
    assert_eq!(code(&night), 2, "{}{}", stdout(&night), stderr(&night));
    assert!(stderr(&night).contains(&root_text), "names the root: {}", stderr(&night));
    assert!(stderr(&night).contains("--allow-gone"), "{}", stderr(&night));
    assert_eq!(run_records(&env), 1, "nothing recorded as a quiet night");

    let prom = env.path("repovault.prom");
    let out = lag(&env, &root, &["--prometheus", prom.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains(&root_text), "{}", stderr(&out));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("repovault_scan_root_problem 1"), "{text}");

    let missing = env.path("no-such-root");
    let out = run(&env, &missing, &[]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains(&*missing.to_string_lossy()), "{}", stderr(&out));

    let declared = run(&env, &root, &["--allow-gone", "--json"]);
    assert_eq!(code(&declared), 0, "{}", stderr(&declared));
    assert_eq!(json(&declared)["gone"], 3);
    let out = lag(&env, &root, &["--allow-gone", "--prometheus", prom.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("repovault_gone{repo=\"b\"} 1"), "gone repositories are in the metrics:\n{text}");
    assert!(text.contains("repovault_gone_repositories 3"), "{text}");
    assert!(text.contains("repovault_scan_root_problem 0"), "{text}");
}

/// Runs `script` with `sh` in a private mount namespace (we run as root); returns the
/// `name=value` lines it printed.
fn in_mount_namespace(env: &Env, script: &str, vars: &[(&str, &Path)]) -> Output {
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "sh", "-c", script])
        .env("RV", env!("CARGO_BIN_EXE_repovault"))
        .env("REPOVAULT_STORE", env.store())
        .env("TMPDIR", env.dir.path());
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().expect("this test needs `unshare` (util-linux)")
}

#[test]
fn a_scan_root_that_is_no_longer_a_mount_point_is_refused() {
    let env = Env::new();
    env.init_store();
    let template = new_repo(&env.path("template"));
    commit_file(&template, "f", "x\n", "c");
    let root = env.path("forge");
    std::fs::create_dir(&root).unwrap();
    let log = env.path("log");
    // The same repository on the mounted disk and, after the unmount, on the bare directory
    // beneath: nothing is gone, only the mount is.
    let script = r#"
        set -u
        mount -t tmpfs tmpfs "$ROOT" || { echo "mount=failed"; exit 0; }
        echo "mount=0"
        cp -a "$TEMPLATE" "$ROOT/app"
        "$RV" run --scan "$ROOT" >"$LOG.mounted" 2>&1; echo "mounted=$?"
        umount "$ROOT"; echo "umount=$?"
        cp -a "$TEMPLATE" "$ROOT/app"
        "$RV" run --scan "$ROOT" >"$LOG.unmounted" 2>&1; echo "unmounted=$?"
        "$RV" lag --scan "$ROOT" >"$LOG.lag" 2>&1; echo "lag=$?"
        "$RV" run --scan "$ROOT" --allow-gone >"$LOG.allowed" 2>&1; echo "allowed=$?"
    "#;
    let out = in_mount_namespace(&env, script, &[("ROOT", &root), ("TEMPLATE", &template), ("LOG", &log)]);
    let read_log = |suffix: &str| std::fs::read_to_string(format!("{}.{suffix}", log.display())).unwrap_or_default();
    assert_eq!(script_step(&out, "mount"), "0", "{}", stderr(&out));
    assert_eq!(script_step(&out, "mounted"), "0", "{}", read_log("mounted"));
    assert_eq!(script_step(&out, "umount"), "0");
    let refused = read_log("unmounted");
    assert_eq!(script_step(&out, "unmounted"), "2", "{refused}");
    assert!(refused.contains(&*root.to_string_lossy()) && refused.contains("mount point"), "{refused}");
    assert_eq!(script_step(&out, "lag"), "2", "{}", read_log("lag"));
    assert_eq!(script_step(&out, "allowed"), "0", "{}", read_log("allowed"));
    assert_eq!(run_records(&env), 2, "the refused run recorded nothing");
}

// 4. Found but not backed up.

#[test]
fn repositories_left_alone_by_design_are_reported_apart_from_failures() {
    let (env, root) = forge(&["app"]);
    let refused = new_repo(&root.join("bad\u{1b}[31mname"));
    commit_file(&refused, "f", "x\n", "c");

    let night = run(&env, &root, &[]);
    assert_eq!(code(&night), 0, "a refused name does not fail the night: {}{}", stdout(&night), stderr(&night));
    let text = stdout(&night);
    assert!(text.lines().any(|l| l.trim_start().starts_with("not backed up") && l.contains(" 1 ")), "{text}");
    assert!(text.contains("bad\\x1b[31mname"), "the refused path is listed, escaped: {text}");
    assert!(!text.contains('\u{1b}'), "no raw escape reaches the terminal");

    let json_night = json(&run(&env, &root, &["--json"]));
    assert_eq!(json_night["not_backed_up"], 1, "{json_night}");
    assert_eq!(json_night["failed"], 0, "{json_night}");
    let whys: Vec<&str> =
        json_night["not_backed_up_repos"].as_array().unwrap().iter().map(|n| n["why"].as_str().unwrap()).collect();
    assert!(whys.len() == 1 && whys[0].contains("refused"), "{whys:?}");

    let prom = env.path("repovault.prom");
    let out = lag(&env, &root, &["--json", "--max-lag", "26h", "--prometheus", prom.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "not a forever-stale repository: {}{}", stdout(&out), stderr(&out));
    let report = json(&out);
    assert_eq!(report["repos"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["not_backed_up"], 1);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("repovault_not_backed_up_repositories 1"), "{text}");
}

// 5. The systemd unit, as shipped.

/// The value of `Key=` lines of a unit file, in order.
fn directives<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=')).collect()
}

#[test]
fn the_systemd_unit_updates_the_prometheus_file_after_a_failed_night() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let unit = std::fs::read_to_string(shipped.join("repovault.service")).unwrap();
    assert!(directives(&unit, "ExecStartPost").is_empty(), "ExecStartPost is skipped after a failed ExecStart");
    let [start] = directives(&unit, "ExecStart")[..] else { panic!("one ExecStart in\n{unit}") };
    let [after] = directives(&unit, "ExecStopPost")[..] else { panic!("one ExecStopPost in\n{unit}") };
    assert!(after.contains(" lag ") && after.contains("--prometheus"), "{after}");

    let (env, root) = forge(&["good", "broken"]);
    corrupt(&root.join("broken"));
    let prom = env.path("textfile/repovault.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let config = env.path("config.toml");
    std::fs::write(&config, format!("store = \"{}\"\n", env.store())).unwrap();
    let [environment] = directives(&unit, "Environment")[..] else { panic!("one Environment in\n{unit}") };
    assert_eq!(environment, "REPOVAULT_CONFIG=/etc/repovault/config.toml");
    let binary = env!("CARGO_BIN_EXE_repovault");
    let substitute = |line: &str| {
        line.replace("/usr/local/bin/repovault", binary)
            .replace("/var/lib/node_exporter/textfile/repovault.prom", prom.to_str().unwrap())
            .replace("/srv/git", root.to_str().unwrap())
    };
    let exec = |line: &str| {
        let line = substitute(line);
        let words: Vec<&str> = line.trim_start_matches(['-', '@', '+', '!']).split_whitespace().collect();
        Command::new(words[0])
            .args(&words[1..])
            .env_remove("REPOVAULT_STORE")
            .env("REPOVAULT_CONFIG", &config)
            .env("TMPDIR", env.dir.path())
            .output()
            .unwrap()
    };
    let night = exec(start);
    assert_eq!(code(&night), 1, "{}", stderr(&night));
    let post = exec(after);
    assert!(after.starts_with('-') || code(&post) == 0, "{}", stderr(&post));
    let text = std::fs::read_to_string(&prom).unwrap_or_else(|e| panic!("no prom file ({e}): {}", stderr(&post)));
    assert!(text.contains("repovault_last_run_failed_repositories 1"), "{text}");

    // systemd's own check of the units, with the binary where the unit expects it.
    // scripts/test installs systemd for this check.
    let have = Command::new("systemd-analyze").arg("--version").stdout(Stdio::null()).status();
    assert!(have.is_ok_and(|s| s.success()), "systemd-analyze is needed (apt-get install systemd)");
    let dir = env.path("units");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("repovault.service"), unit.replace("/usr/local/bin/repovault", binary)).unwrap();
    std::fs::copy(shipped.join("repovault.timer"), dir.join("repovault.timer")).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("repovault.service"))
        .arg(dir.join("repovault.timer"))
        .output()
        .unwrap();
    assert!(out.status.success(), "systemd-analyze verify: {}{}", stdout(&out), stderr(&out));
}

// 6. Outputs.

#[test]
fn json_log_format_makes_stdout_one_json_line_and_every_stderr_line_json() {
    let (env, root) = forge(&["good", "broken"]);
    corrupt(&root.join("broken"));
    let night = env.rv(&["--log-format", "json", "run", "--scan", root.to_str().unwrap()]);
    assert_eq!(code(&night), 1, "{}", stderr(&night));
    let text = stdout(&night);
    assert_eq!(text.lines().count(), 1, "one JSON line on stdout: {text}");
    let result: Value = serde_json::from_str(&text).unwrap();
    for field in [
        "examined",
        "changed",
        "backed_up",
        "unchanged",
        "failed",
        "gone",
        "not_backed_up",
        "bytes_read",
        "bytes_stored",
        "duration_seconds",
    ] {
        assert!(result[field].is_number(), "{field} in {result}");
    }
    assert_eq!(result["failed_repos"][0]["repo"], "broken");
    assert!(result["failed_repos"][0]["error"].is_string());
    all_lines_are_json(&stderr(&night));

    // Another host's fresh lock: the notice is a JSON event, and -q silences it.
    let lock = env.path("store/locks/run");
    std::fs::write(
        &lock,
        r#"{"host":"backup-02.example","pid":4242,"pid_start":1,"started_at":"2026-11-20T01:15:00Z"}"#,
    )
    .unwrap();
    let held = env.rv(&["--log-format", "json", "run", "--scan", root.to_str().unwrap()]);
    assert_eq!(code(&held), 0);
    assert!(stderr(&held).contains("another run holds"), "{}", stderr(&held));
    all_lines_are_json(&stderr(&held));
    let quiet = env.rv(&["-q", "run", "--scan", root.to_str().unwrap()]);
    assert_eq!(code(&quiet), 0);
    assert_eq!(stderr(&quiet), "", "-q keeps only errors");
}

#[test]
fn a_closed_stdout_ends_run_and_lag_quietly_after_the_work_is_done() {
    let (env, root) = forge(&["a", "b"]);
    let mut child = env
        .rv_command(&["run", "--scan", root.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // as `| head -0` would
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "a closed pipe is not an error");
    assert_eq!(snapshot_count(&env.path("store")), 2, "the run finished its work");
    assert_eq!(run_records(&env), 1);

    let mut child = env
        .rv_command(&["lag", "--scan", root.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn a_full_stdout_is_one_error_line_after_the_run_is_recorded() {
    let (env, root) = forge(&["a", "b"]);
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = env.rv_command(&["run", "--scan", root.to_str().unwrap()]).stdout(full).output().unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    assert!(err.contains("standard output"), "{err}");
    assert_eq!(snapshot_count(&env.path("store")), 2, "the work was done");
    assert_eq!(run_records(&env), 1, "and recorded");
}

// 7. A read-only store is unusable: exit 2.

#[test]
fn a_read_only_store_is_exit_2_naming_the_store() {
    let (env, root) = forge(&["a"]);
    let store = env.path("store");
    let log = env.path("log");
    let script = r#"
        set -u
        mount --bind "$STORE" "$STORE" && mount -o remount,bind,ro "$STORE" || { echo "mount=failed"; exit 0; }
        echo "mount=0"
        "$RV" run --scan "$ROOT" >"$LOG" 2>&1; echo "run=$?"
    "#;
    let out = in_mount_namespace(&env, script, &[("STORE", &store), ("ROOT", &root), ("LOG", &log)]);
    assert_eq!(script_step(&out, "mount"), "0", "{}", stderr(&out));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(script_step(&out, "run"), "2", "{text}");
    assert!(text.contains(&env.store()), "names the store: {text}");
    assert!(!text.contains("panicked"), "{text}");
}

// Config keys `max_lag` and `prometheus`.

#[test]
fn max_lag_and_prometheus_come_from_the_config_when_no_flag_is_given() {
    let (env, root) = forge(&["a", "broken"]);
    corrupt(&root.join("broken"));
    age_refs(&root.join("broken"), "3 days ago");
    let prom = env.path("repovault.prom");
    let config = env.path("config.toml");
    std::fs::write(&config, format!("max_lag = \"26h\"\nprometheus = \"{}\"\n", prom.display())).unwrap();
    let config = config.to_str().unwrap();

    let night = env.rv(&["--config", config, "run", "--scan", root.to_str().unwrap()]);
    assert_eq!(code(&night), 1, "{}", stderr(&night));
    let text = std::fs::read_to_string(&prom).expect("run writes the configured textfile");
    assert!(text.contains("repovault_last_run_failed_repositories 1"), "{text}");
    assert!(text.contains("repovault_stale_repositories 1"), "max_lag from the config: {text}");
    std::fs::remove_file(&prom).unwrap();

    let out = env.rv(&["--config", config, "lag", "--scan", root.to_str().unwrap()]);
    assert_eq!(code(&out), 4, "max_lag from the config: {}", stderr(&out));
    assert!(prom.exists(), "prometheus from the config");
    let flag = env.rv(&["--config", config, "lag", "--scan", root.to_str().unwrap(), "--max-lag", "4d"]);
    assert_eq!(code(&flag), 0, "the flag wins: {}", stderr(&flag));
}

// Review of issue 7: what the first fixes missed.

#[test]
fn a_mass_deletion_declared_once_is_not_refused_again_the_next_night() {
    let (env, root) = forge(&["a", "b", "c", "d", "e", "f"]);
    assert_eq!(code(&run(&env, &root, &[])), 0);
    for name in ["a", "b", "c", "d"] {
        std::fs::remove_dir_all(root.join(name)).unwrap();
    }
    assert_eq!(code(&run(&env, &root, &[])), 2, "the sudden loss is refused once");
    let declared = run(&env, &root, &["--allow-gone", "--json"]);
    assert_eq!(code(&declared), 0, "{}", stderr(&declared));
    assert_eq!(json(&declared)["gone"], 4);

    let next = run(&env, &root, &["--json"]);
    assert_eq!(code(&next), 0, "the declared deletions do not count again: {}", stderr(&next));
    assert_eq!(json(&next)["gone"], 4, "still reported as gone");
    let prom = env.path("repovault.prom");
    let out = lag(&env, &root, &["--prometheus", prom.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("repovault_scan_root_problem 0"), "{text}");
    assert!(text.contains("repovault_gone_repositories 4"), "{text}");
}

#[test]
fn an_unmounted_scan_root_spelled_differently_is_refused_too() {
    let env = Env::new();
    env.init_store();
    let template = new_repo(&env.path("template"));
    commit_file(&template, "f", "x\n", "c");
    let root = env.path("forge");
    std::fs::create_dir(&root).unwrap();
    let link = env.path("forge-link");
    std::os::unix::fs::symlink(&root, &link).unwrap();
    let log = env.path("log");
    let script = r#"
        set -u
        mount -t tmpfs tmpfs "$ROOT" || { echo "mount=failed"; exit 0; }
        echo "mount=0"
        cp -a "$TEMPLATE" "$ROOT/app"
        "$RV" run --scan "$ROOT" >"$LOG.mounted" 2>&1; echo "mounted=$?"
        umount "$ROOT"; echo "umount=$?"
        cp -a "$TEMPLATE" "$ROOT/app"
        "$RV" run --scan "$ROOT/" >"$LOG.slash" 2>&1; echo "slash=$?"
        "$RV" run --scan "$LINK" >"$LOG.link" 2>&1; echo "link=$?"
        cd "$ROOT/.." && "$RV" run --scan ./forge >"$LOG.relative" 2>&1; echo "relative=$?"
        "$RV" lag --scan "$LINK/" >"$LOG.lag" 2>&1; echo "lag=$?"
    "#;
    let vars = [("ROOT", root.as_path()), ("TEMPLATE", &template), ("LOG", &log), ("LINK", &link)];
    let out = in_mount_namespace(&env, script, &vars);
    let read_log = |suffix: &str| std::fs::read_to_string(format!("{}.{suffix}", log.display())).unwrap_or_default();
    assert_eq!(script_step(&out, "mount"), "0", "{}", stderr(&out));
    assert_eq!(script_step(&out, "mounted"), "0", "{}", read_log("mounted"));
    assert_eq!(script_step(&out, "umount"), "0");
    for step in ["slash", "link", "relative", "lag"] {
        let text = read_log(step);
        assert_eq!(script_step(&out, step), "2", "{step}: {text}");
        assert!(text.contains("mount point"), "{step}: {text}");
    }
    assert_eq!(run_records(&env), 1, "no refused run was recorded");
}

#[test]
fn run_json_prints_a_result_when_another_run_holds_the_lock() {
    let (env, root) = forge(&["a"]);
    std::fs::write(
        env.path("store/locks/run"),
        r#"{"host":"backup-02.example","pid":4242,"pid_start":1,"started_at":"2026-11-20T01:15:00Z"}"#,
    )
    .unwrap();
    let held = run(&env, &root, &["--json"]);
    assert_eq!(code(&held), 0, "{}", stderr(&held));
    let result = json(&held);
    assert_eq!(result["examined"], 0, "{result}");
    assert_eq!(result["backed_up"], 0, "{result}");
    let skipped = result["skipped"].as_str().unwrap_or_else(|| panic!("skipped says why: {result}"));
    assert!(skipped.contains("pid 4242") && skipped.contains("backup-02.example"), "{skipped}");
    assert_eq!(result["held_by"]["host"], "backup-02.example", "{result}");
    assert_eq!(run_records(&env), 0, "nothing recorded");

    let logged = env.rv(&["--log-format", "json", "run", "--scan", root.to_str().unwrap()]);
    assert_eq!(code(&logged), 0);
    let text = stdout(&logged);
    assert_eq!(text.lines().count(), 1, "one JSON line: {text}");
    let line: Value = serde_json::from_str(&text).unwrap();
    assert!(line["skipped"].is_string(), "{line}");
}

#[test]
fn prometheus_labels_hold_no_control_characters_and_name_paths_absolutely() {
    let (env, root) = forge(&["app"]);
    let hostile = new_repo(&root.join("esc\u{1b}[31mRED\u{7}.git"));
    commit_file(&hostile, "f", "x\n", "c");
    let prom = env.path("repovault.prom");
    // The root as typed relative to the working directory (the env's directory).
    let out = env.rv(&["lag", "--scan", "forge", "--prometheus", prom.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let bytes = std::fs::read(&prom).unwrap();
    let raw: Vec<u8> = bytes.iter().copied().filter(|&b| b < 0x20 && b != b'\n').collect();
    assert!(raw.is_empty(), "control bytes {raw:?} in\n{}", String::from_utf8_lossy(&bytes));
    let text = String::from_utf8(bytes).unwrap();
    let canonical_root = std::fs::canonicalize(&root).unwrap();
    let label =
        format!("repovault_not_backed_up{{repo=\"{}/esc\\\\x1b[31mRED\\\\x07.git\"}} 1", canonical_root.display());
    assert!(text.contains(&label), "{label} in\n{text}");
}

#[test]
fn config_values_are_not_blamed_on_flags() {
    let (env, root) = forge(&["a"]);
    let config = env.path("config.toml");
    std::fs::write(&config, "jobs = 0\n").unwrap();
    let out = env.rv(&["--config", config.to_str().unwrap(), "run", "--scan", root.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("config key jobs"), "{}", stderr(&out));

    std::fs::write(&config, "max_lag = \"soon\"\n").unwrap();
    let out = env.rv(&["--config", config.to_str().unwrap(), "lag", "--scan", root.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("config key max_lag"), "{}", stderr(&out));
}

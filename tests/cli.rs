//! The command-line contract: exit codes, refusals, configuration precedence.

mod common;

use common::*;

#[test]
fn hostile_names_are_refused_without_touching_the_filesystem() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "f", "x", "c");
    let before = files_under(env.dir.path());
    // `../x` from the store would be a sibling of the test's directory; whatever the machine
    // has there already must be left exactly as it was.
    let sibling = env.dir.path().parent().unwrap().join("x");
    let sibling_before = std::fs::symlink_metadata(&sibling).ok().map(|m| (m.len(), m.modified().ok()));
    for name in ["../x", "/abs", "", "a/../../b", "a\\b", "./a"] {
        let out = env.rv(&["backup", "--name", name, &repo.to_string_lossy()]);
        assert_eq!(code(&out), 2, "name {name:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
        let out = env.rv(&["restore", name, &env.path("dest").to_string_lossy()]);
        assert_eq!(code(&out), 2, "restore name {name:?}: {}", stderr(&out));
    }
    assert_eq!(files_under(env.dir.path()), before, "nothing was written anywhere");
    let sibling_after = std::fs::symlink_metadata(&sibling).ok().map(|m| (m.len(), m.modified().ok()));
    assert_eq!(sibling_after, sibling_before, "{} was not created or touched", sibling.display());
}

#[test]
fn restore_refuses_a_non_empty_destination_unless_forced() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "f", "x", "c");
    env.backup("src", &repo);
    let dest = env.path("dest");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("precious"), "keep me").unwrap();
    let out = env.rv(&["restore", "src", &dest.to_string_lossy()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(dest.join("precious")).unwrap(), "keep me");

    env.rv_ok(&["restore", "src", &dest.to_string_lossy(), "--force"]);
    assert!(!dest.join("precious").exists());
    assert_eq!(ref_state(&dest), ref_state(&repo));
    fsck(&dest);
    // An empty existing directory is fine without --force.
    let empty = env.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    env.rv_ok(&["restore", "src", &empty.to_string_lossy()]);
}

#[test]
fn init_is_idempotent_and_refuses_foreign_directories() {
    let env = Env::new();
    env.init_store();
    let again = env.rv(&["init"]);
    assert_eq!(code(&again), 0);
    assert!(stderr(&again).contains("already"), "{}", stderr(&again));

    let foreign = env.path("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("file"), "x").unwrap();
    let out = env.rv(&["init", "--store", &foreign.to_string_lossy()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(!foreign.join("config").exists());
}

#[test]
fn missing_store_is_a_usage_error() {
    let env = Env::new();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "f", "x", "c");
    let out = env.rv(&["backup", &repo.to_string_lossy()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("not a repovault store"), "{}", stderr(&out));
    for args in [&["snapshots"][..], &["verify"], &["restore", "src", "out"]] {
        assert_eq!(code(&env.rv(args)), 2, "{args:?}");
    }
    let out = env.rv(&["backup", "--bogus-flag"]);
    assert_eq!(code(&out), 2);
}

#[test]
fn store_comes_from_flag_then_env_then_config_file() {
    let env = Env::new();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "f", "x", "c");
    let from_file = env.path("from-file");
    let from_flag = env.path("from-flag");
    let config = env.path("repovault.toml");
    std::fs::write(&config, format!("store = {:?}\n", from_file.to_string_lossy())).unwrap();
    let run = |args: &[&str], with_env: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_repovault"));
        cmd.arg("--config").arg(&config).args(args).env_remove("REPOVAULT_STORE");
        if with_env {
            cmd.env("REPOVAULT_STORE", env.store());
        }
        cmd.output().unwrap()
    };
    assert_eq!(code(&run(&["init"], false)), 0);
    assert!(from_file.join("config").exists(), "config file's store used");
    assert_eq!(code(&run(&["init"], true)), 0);
    assert!(env.path("store/config").exists(), "env wins over the file");
    assert_eq!(code(&run(&["init", "--store", &from_flag.to_string_lossy()], true)), 0);
    assert!(from_flag.join("config").exists(), "flag wins over env");

    std::fs::write(&config, "no_such_key = 1\n").unwrap();
    let out = run(&["snapshots"], true);
    assert_eq!(code(&out), 2, "unknown config keys are refused: {}", stderr(&out));
    assert!(stderr(&out).contains("no_such_key"), "the unknown key is named: {}", stderr(&out));
}

#[test]
fn snapshots_json_has_the_contract_fields() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("work"));
    let head = commit_file(&repo, "f", "x", "c");
    let first = env.backup("team/work", &repo);
    commit_file(&repo, "f", "y", "d");
    let second = env.backup("team/work", &repo);
    let list: serde_json::Value = serde_json::from_str(&env.rv_ok(&["snapshots", "--json"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let s = &list[0];
    for field in ["id", "repo", "vcs", "created_at", "source_changed_at", "parent", "head", "refs"] {
        assert!(s.get(field).is_some(), "{field} missing in {s}");
    }
    assert_eq!(s["id"], first.as_str());
    assert_eq!(s["repo"], "team/work");
    assert_eq!(s["vcs"], "git");
    assert_eq!(s["parent"], serde_json::Value::Null);
    assert_eq!(s["head"], "refs/heads/main");
    assert_eq!(s["refs"]["refs/heads/main"], head.as_str());
    assert!(s["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(list[1]["id"], second.as_str());
    assert_eq!(list[1]["parent"], first.as_str());
}

#[test]
fn backup_name_defaults_to_the_last_path_component() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("nested/app"));
    commit_file(&repo, "f", "x", "c");
    env.rv_ok(&["backup", &format!("{}/", repo.to_string_lossy())]);
    let list: serde_json::Value = serde_json::from_str(&env.rv_ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(list[0]["repo"], "app");
}

#[test]
fn errors_are_one_line_without_panics() {
    let env = Env::new();
    env.init_store();
    let out = env.rv(&["backup", &env.path("does-not-exist").to_string_lossy()]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let not_git = env.path("plain");
    std::fs::create_dir_all(&not_git).unwrap();
    let out = env.rv(&["backup", &not_git.to_string_lossy()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("plain"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
}

/// A store written by a newer repovault (a format this binary does not know) is refused
/// with a message that says so, before anything is read or written.
#[test]
fn a_store_of_an_unknown_format_is_refused_clearly() {
    let env = Env::new();
    env.init_store();
    let config_path = env.path("store/config");
    let config = std::fs::read_to_string(&config_path).unwrap().replace("\"format\": 4", "\"format\": 5");
    assert!(config.contains("\"format\": 5"), "{config}");
    std::fs::write(&config_path, &config).unwrap();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "f", "x", "c");
    for args in [vec!["snapshots"], vec!["backup", &repo.to_string_lossy()], vec!["verify"]] {
        let out = env.rv(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("format version 5 is not supported"), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(snapshot_count(&env.path("store")), 0);
}

fn snapshots_json(env: &Env, name: &str) -> Vec<serde_json::Value> {
    let list: serde_json::Value = serde_json::from_str(&env.rv_ok(&["snapshots", "--json", name])).unwrap();
    list.as_array().unwrap().clone()
}

/// `snapshots` shows times to the second; `--at` with such a time must pick the snapshot
/// taken during that second, not the one before it.
#[test]
fn restore_at_a_time_shown_by_snapshots_picks_that_snapshot() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "f", "one", "c1");
    env.backup("app", &repo);
    commit_file(&repo, "f", "two", "c2");
    let second = env.backup("app", &repo);
    let state_at_second = ref_state(&repo);
    commit_file(&repo, "f", "three", "c3");
    let list = snapshots_json(&env, "app");
    let shown = list.iter().find(|s| s["id"] == second.as_str()).unwrap()["created_at"].as_str().unwrap().to_owned();
    assert!(shown.ends_with('Z') && !shown.contains('.'), "shown to the second with its zone: {shown}");
    for at in [shown.clone(), shown.replace('T', " "), shown.replace('T', " ").replace('Z', " UTC")] {
        let dest = env.path(&format!("dest-{}", at.replace([' ', ':'], "_")));
        env.restore("app", &dest, Some(&at));
        assert_eq!(ref_state(&dest), state_at_second, "--at {at}");
    }
    let out = env.rv(&["restore", "app", &env.path("nozone").to_string_lossy(), "--at", "2026-11-20T03:00:00"]);
    assert_eq!(code(&out), 2, "a time without a zone is refused: {}", stderr(&out));
}

#[test]
fn an_ambiguous_snapshot_prefix_lists_the_candidates() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    // 17 snapshots: two of them share their first hex digit.
    for i in 0..17 {
        commit_file(&repo, "f", &format!("v{i}"), &format!("c{i}"));
        env.backup("app", &repo);
    }
    let ids: Vec<String> = snapshots_json(&env, "app").iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();
    let prefix = (0..16u8)
        .map(|d| format!("{d:x}"))
        .find(|p| ids.iter().filter(|id| id.starts_with(p.as_str())).count() >= 2)
        .unwrap();
    let out = env.rv(&["restore", "app", &env.path("dest").to_string_lossy(), "--at", &prefix]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for id in ids.iter().filter(|id| id.starts_with(prefix.as_str())) {
        assert!(err.contains(id.as_str()), "candidate {id} listed: {err}");
    }
    assert!(!env.path("dest").join("HEAD").exists());
}

#[test]
fn restore_json_names_the_snapshot_and_destination() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "f", "x", "c");
    let id = env.backup("app", &repo);
    let dest = env.path("dest");
    let out = env.rv_ok(&["restore", "app", &dest.to_string_lossy(), "--json"]);
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["repo"], "app");
    assert_eq!(result["snapshot"], id.as_str());
    assert_eq!(result["dest"], dest.to_string_lossy().as_ref());
    assert_eq!(ref_state(&dest), ref_state(&repo));
}

#[test]
fn quiet_silences_notices_and_json_logs_make_every_stderr_line_json() {
    let env = Env::new();
    let out = env.rv(&["-q", "init"]);
    assert_eq!(code(&out), 0);
    assert_eq!(stderr(&out), "", "-q: no notice");
    let out = env.rv(&["--log-format", "json", "init"]);
    assert_eq!(code(&out), 0);
    let missing = env.path("missing").to_string_lossy().into_owned();
    let fatal = env.rv(&["--log-format", "json", "snapshots", "--store", &missing]);
    assert_eq!(code(&fatal), 2);
    for out in [&out, &fatal] {
        let err = stderr(out);
        assert!(!err.trim().is_empty());
        for line in err.lines() {
            let event: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            assert!(event.get("level").is_some(), "{line}");
        }
    }
    assert!(stderr(&fatal).contains(&missing), "the fatal error names the store: {}", stderr(&fatal));
    // A config file may ask for quiet too.
    let config = env.path("quiet.toml");
    std::fs::write(&config, "quiet = true\n").unwrap();
    let out = env.rv(&["--config", &config.to_string_lossy(), "init"]);
    assert_eq!(code(&out), 0);
    assert_eq!(stderr(&out), "", "quiet from the config file: {}", stderr(&out));
}

/// A pipe whose reader is already gone: every write to it fails with EPIPE.
fn closed_pipe() -> std::process::Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    std::process::Stdio::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[1]) })
}

fn two_repositories_backed_up(env: &Env) {
    env.init_store();
    for name in ["a", "b"] {
        let repo = new_repo(&env.path(&format!("forge/{name}")));
        commit_file(&repo, "f", name, "c");
        env.backup(name, &repo);
    }
}

#[test]
fn a_closed_stdout_ends_quietly_and_a_full_one_is_an_error_line() {
    let env = Env::new();
    two_repositories_backed_up(&env);
    let forge = env.path("forge").to_string_lossy().into_owned();
    for args in [vec!["snapshots"], vec!["snapshots", "--json"], vec!["lag", "--scan", &forge]] {
        let out = env.rv_command(&args).stdout(closed_pipe()).output().unwrap();
        assert_eq!(code(&out), 0, "{args:?} into a closed pipe: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}: quiet");

        let full = std::fs::File::options().write(true).open("/dev/full").unwrap();
        let out = env.rv_command(&args).stdout(full).output().unwrap();
        assert_eq!(code(&out), 1, "{args:?} into a full stdout: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("standard output") && !err.contains("panicked"), "{err}");
    }
}

/// Times in tables are RFC 3339 UTC to the second, the form `restore --at` takes.
#[test]
fn lag_table_shows_times_with_their_zone() {
    let env = Env::new();
    two_repositories_backed_up(&env);
    let out = env.rv_ok(&["lag", "--scan", &env.path("forge").to_string_lossy()]);
    let row = out.lines().find(|l| l.ends_with("  a")).unwrap_or_else(|| panic!("a row for a: {out}"));
    let times: Vec<&str> = row.split_whitespace().filter(|w| w.contains(':')).collect();
    assert_eq!(times.len(), 2, "{row}");
    for t in times {
        assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.ends_with('Z'), "{t} in {row}");
    }
}

/// With JSON logs, errors met before logging starts (a bad config file, flags clap refuses)
/// are JSON lines too: the systemd unit's journal must not be silent about them.
#[test]
fn early_errors_are_json_lines_with_json_logs() {
    let env = Env::new();
    env.init_store();
    let config = env.path("bad.toml");
    std::fs::write(&config, "bogus_key = 1\nstoer = \"x\"\n").unwrap();
    let config = config.to_string_lossy().into_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--log-format", "json", "--config", &config, "snapshots"], "stoer"),
        (vec!["--log-format", "json", "snapshots", "--bogus"], "--bogus"),
        (vec!["--log-format=json", "restore", "only-a-name"], "DEST"),
    ];
    for (args, named) in cases {
        let out = env.rv(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        let event: serde_json::Value = serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("{e}: {err}"));
        assert_eq!(event["level"], "ERROR", "{err}");
        assert!(event["fields"]["message"].as_str().unwrap().contains(named), "{args:?} names {named}: {err}");
    }
    // Without JSON logs, every unknown key of the file is named on one line.
    let out = env.rv(&["--config", &config, "snapshots"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("bogus_key") && stderr(&out).contains("stoer"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
}

/// Directory names are data from outside: an escape sequence or a newline in one is shown
/// escaped, so it neither drives the terminal nor splits a line.
#[test]
fn hostile_directory_names_are_printed_escaped_once() {
    let env = Env::new();
    env.init_store();
    let evil = env.path("forge/evil\x1b[31mred\nline\x07.git");
    let repo = new_repo(&evil);
    commit_file(&repo, "f", "x", "c");
    let good = new_repo(&env.path("forge/good"));
    commit_file(&good, "f", "x", "c");
    let forge = env.path("forge").to_string_lossy().into_owned();
    let night = env.rv(&["run", "--scan", &forge]);
    assert_eq!(code(&night), 0, "a refused name is not a failure: {}", stderr(&night));
    let lag = env.rv(&["lag", "--scan", &forge]);
    for out in [&night, &lag] {
        let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
        assert!(!all.iter().any(|&b| b == 0x1b || b == 0x07), "raw control bytes: {}", String::from_utf8_lossy(&all));
        let text = String::from_utf8_lossy(&all);
        assert!(text.contains("evil\\x1b[31mred\\nline\\x07.git"), "escaped once: {text}");
        assert!(!text.contains("\\\\x1b") && !text.contains("\\u{1b}"), "not escaped twice: {text}");
    }
}

/// A store mounted read-only is the machine's set-up, not work that failed: exit 2, naming
/// the store, for every command that writes to it.
#[test]
fn a_read_only_store_is_a_usage_error_for_backup_and_forget() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "f", "x", "c");
    let first = env.backup("app", &repo);
    commit_file(&repo, "f", "y", "d");
    let script = r#"
        set -u
        mount --bind "$STORE" "$STORE" && mount -o remount,ro,bind "$STORE" || { echo "mount=failed"; exit 0; }
        echo "mount=0"
        "$RV" backup --store "$STORE" --name app "$REPO" >"$LOG.backup" 2>&1; echo "backup=$?"
        "$RV" forget --store "$STORE" app --snapshot "$FIRST" >"$LOG.forget" 2>&1; echo "forget=$?"
    "#;
    let log = env.path("log");
    let out = std::process::Command::new("unshare")
        .args(["--mount", "sh", "-c", script])
        .env("RV", env!("CARGO_BIN_EXE_repovault"))
        .env("STORE", env.store())
        .env("REPO", &repo)
        .env("FIRST", &first)
        .env("LOG", &log)
        .output()
        .expect("this test needs `unshare` (util-linux)");
    assert_eq!(script_step(&out, "mount"), "0", "{}", stderr(&out));
    for step in ["backup", "forget"] {
        let said = std::fs::read_to_string(format!("{}.{step}", log.display())).unwrap();
        assert_eq!(script_step(&out, step), "2", "{step}: {said}");
        assert!(said.contains(&env.store()), "{step} names the store: {said}");
    }
    assert_eq!(snapshot_count(&env.path("store")), 1, "nothing changed");
}

/// Mercurial snapshots need store format 4: a binary that knows only format 3 would not see
/// their bundles, and its prune would delete them. A format 3 store refuses them, saying
/// why, and keeps backing up git repositories.
#[test]
fn a_format_3_store_refuses_mercurial_repositories_with_the_reason() {
    let env = Env::new();
    env.init_store_format(3);
    let hg_repo = common::hg::HgRepo::empty(&env.path("docs"));
    hg_repo.commit("a", "one", &[]);
    let hg_repo = hg_repo.path;
    let out = env.rv(&["backup", hg_repo.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("format 3, which cannot hold Mercurial snapshots"), "{}", stderr(&out));
    let listed = env.rv(&["snapshots", "--json"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]", "no snapshot recorded");
    let git_repo = new_repo(&env.path("app"));
    commit_file(&git_repo, "f", "x", "c");
    env.backup("app", &git_repo);
}

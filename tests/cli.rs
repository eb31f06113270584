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
    for name in ["../x", "/abs", "", "a/../../b", "a\\b", "./a"] {
        let out = env.rv(&["backup", "--name", name, &repo.to_string_lossy()]);
        assert_eq!(code(&out), 2, "name {name:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
        let out = env.rv(&["restore", name, &env.path("dest").to_string_lossy()]);
        assert_eq!(code(&out), 2, "restore name {name:?}: {}", stderr(&out));
    }
    assert_eq!(files_under(env.dir.path()), before, "nothing was written anywhere");
    assert!(!env.dir.path().parent().unwrap().join("x").exists());
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
    let config = std::fs::read_to_string(&config_path).unwrap().replace("\"format\": 2", "\"format\": 3");
    assert!(config.contains("\"format\": 3"), "{config}");
    std::fs::write(&config_path, &config).unwrap();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "f", "x", "c");
    for args in [vec!["snapshots"], vec!["backup", &repo.to_string_lossy()], vec!["verify"]] {
        let out = env.rv(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("format version 3 is not supported"), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(snapshot_count(&env.path("store")), 0);
}

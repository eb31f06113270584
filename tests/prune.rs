//! `prune --dry-run`: the retention policy applied to a real store, which stays untouched.
//! The policy's calendar rules are tested exhaustively in src/retention.rs; here the real
//! binary over real git repositories: refusals, keep-last, chains, bytes, config, damage.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// A store with repository `name` backed up `nights` times, one new commit each night:
/// returns the snapshot ids, oldest first.
fn nightly_backups(env: &Env, name: &str, nights: usize) -> Vec<String> {
    let repo = new_repo(&env.path(name));
    (0..nights)
        .map(|night| {
            commit_file(&repo, &format!("night{night}"), &noise_text(night as u64, 4000), "night");
            env.backup(name, &repo)
        })
        .collect()
}

/// Every file of the store with its content: what "nothing changed" compares.
fn store_state(store: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    files_under(store).into_iter().map(|f| (f.clone(), std::fs::read(&f).unwrap())).collect()
}

fn prune_json(env: &Env, args: &[&str]) -> Value {
    let mut all = vec!["prune", "--dry-run", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&env.rv_ok(&all)).expect("prune --json prints JSON")
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn prune_without_dry_run_is_refused_and_deletes_nothing() {
    let env = Env::new();
    env.init_store();
    nightly_backups(&env, "app", 2);
    let before = store_state(&env.path("store"));
    let out = env.rv(&["prune", "--keep-last", "1"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("prune can only --dry-run in this version"), "{}", stderr(&out));
    assert_eq!(store_state(&env.path("store")), before);
}

#[test]
fn a_policy_that_keeps_nothing_or_a_bad_duration_is_refused() {
    let env = Env::new();
    env.init_store();
    nightly_backups(&env, "app", 1);
    for args in [&["prune", "--dry-run"][..], &["prune", "--dry-run", "--keep-last", "0", "--keep-daily", "0"]] {
        let out = env.rv(args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("keeps nothing"), "{}", stderr(&out));
    }
    let out = env.rv(&["prune", "--dry-run", "--keep-within", "2 weeks"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--keep-within 2 weeks"), "{}", stderr(&out));
}

#[test]
fn keep_last_dry_run_keeps_the_newest_and_changes_nothing() {
    let env = Env::new();
    env.init_store();
    let snapshots = nightly_backups(&env, "app", 4);
    let before = store_state(&env.path("store"));
    let report = prune_json(&env, &["--keep-last", "2"]);
    assert_eq!(store_state(&env.path("store")), before, "a dry run changed the store");
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["snapshots_forgotten"], 2);
    let repo = &report["repos"][0];
    assert_eq!(repo["repo"], "app");
    assert_eq!(ids(&repo["keep"]), [snapshots[3].clone(), snapshots[2].clone()]);
    assert_eq!(repo["keep"][0]["reasons"], serde_json::json!(["latest", "last"]));
    assert_eq!(repo["keep"][1]["reasons"], serde_json::json!(["last"]));
    assert_eq!(ids(&repo["forget"]), [snapshots[1].clone(), snapshots[0].clone()]);
    assert!(repo["forget"][0]["created_at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn a_forgotten_snapshot_a_kept_chain_needs_keeps_its_data() {
    let env = Env::new();
    // Before format 3 a snapshot needs its parent chain.
    env.init_store_format(2);
    let snapshots = nightly_backups(&env, "app", 3);
    // Each night is incremental to the one before: the kept newest chains to both others.
    let report = prune_json(&env, &["--keep-last", "1"]);
    let forget = &report["repos"][0]["forget"];
    for entry in forget.as_array().unwrap() {
        assert_eq!(entry["data_kept_for"], serde_json::json!([snapshots[2]]), "{entry}");
    }
    assert_eq!(report["bytes_freed"], 0, "no data is freed while a kept chain needs it");
    let text = env.rv_ok(&["prune", "--dry-run", "--keep-last", "1"]);
    let note = format!("forgotten, but its data stays: kept snapshot {} chains to it", snapshots[2]);
    assert_eq!(text.matches(&note).count(), 2, "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
}

/// Bytes of the object files a snapshot manifest names (pack and index chunks).
fn manifest_chunk_bytes(store: &Path, id: &str) -> u64 {
    let manifest = files_under(&store.join("snapshots"))
        .into_iter()
        .find(|f| f.file_name().unwrap().to_string_lossy().ends_with(id))
        .expect("manifest file");
    let snapshot: Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    let mut chunks: Vec<String> = Vec::new();
    for pack in snapshot["packs"].as_array().unwrap() {
        for list in [&pack["pack"]["chunks"], &pack["index"]["chunks"]] {
            chunks.extend(list.as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()));
        }
    }
    chunks.sort();
    chunks.dedup();
    chunks.iter().map(|c| store.join("objects").join(&c[..2]).join(c).metadata().unwrap().len()).sum()
}

#[test]
fn bytes_freed_counts_the_data_only_forgotten_snapshots_name() {
    let env = Env::new();
    env.init_store();
    let snapshots = nightly_backups(&env, "app", 2);
    // Forgetting the first snapshot breaks the second's chain, so the next backup is full:
    // then the second snapshot's data is needed by nothing kept.
    env.rv_ok(&["forget", "app", "--snapshot", &snapshots[0], "--force"]);
    let repo = env.path("app");
    commit_file(&repo, "later", "later", "later");
    let full = env.backup("app", &repo);
    let report = prune_json(&env, &["--keep-last", "1"]);
    assert_eq!(ids(&report["repos"][0]["keep"]), [full]);
    assert_eq!(report["repos"][0]["forget"][0]["data_kept_for"], serde_json::json!([]));
    let expected = manifest_chunk_bytes(&env.path("store"), &snapshots[1]);
    assert!(expected > 0);
    assert_eq!(report["bytes_freed"], expected);
}

#[test]
fn the_config_policy_applies_without_flags_and_flags_win() {
    let env = Env::new();
    env.init_store();
    nightly_backups(&env, "app", 3);
    let config = env.path("repovault.toml");
    std::fs::write(&config, "[prune]\nkeep_last = 1\n").unwrap();
    let config = config.to_string_lossy().into_owned();
    let from_config = prune_json(&env, &["--config", &config]);
    assert_eq!(from_config["snapshots_forgotten"], 2);
    let from_flags = prune_json(&env, &["--config", &config, "--keep-last", "3"]);
    assert_eq!(from_flags["snapshots_forgotten"], 0);
}

#[test]
fn every_repository_keeps_its_latest_and_names_limit_the_plan() {
    let env = Env::new();
    env.init_store();
    let app = nightly_backups(&env, "app", 2);
    nightly_backups(&env, "lib", 2);
    let all = prune_json(&env, &["--keep-within", "1s"]);
    let repos: Vec<&str> = all["repos"].as_array().unwrap().iter().map(|r| r["repo"].as_str().unwrap()).collect();
    assert_eq!(repos, ["app", "lib"]);
    for repo in all["repos"].as_array().unwrap() {
        assert_eq!(repo["keep"][0]["reasons"][0], "latest", "{repo}");
    }
    let one = prune_json(&env, &["--keep-last", "1", "app"]);
    assert_eq!(one["repos"].as_array().unwrap().len(), 1);
    assert_eq!(ids(&one["repos"][0]["keep"]), [app[1].clone()]);
    let out = env.rv(&["prune", "--dry-run", "--keep-last", "1", "nosuch"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

#[test]
fn a_damaged_manifest_is_named_and_skipped() {
    let env = Env::new();
    env.init_store();
    let snapshots = nightly_backups(&env, "app", 3);
    let damaged = files_under(&env.path("store/snapshots"))
        .into_iter()
        .find(|f| f.file_name().unwrap().to_string_lossy().ends_with(&snapshots[0]))
        .unwrap();
    std::fs::write(&damaged, b"not a manifest").unwrap();
    let out = env.rv(&["prune", "--dry-run", "--json", "--keep-last", "1"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains(&snapshots[0]) && stderr(&out).contains("damaged"), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&report["repos"][0]["forget"]), [snapshots[1].clone()]);
}

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
fn prune_without_dry_run_on_a_format_2_store_is_refused_and_deletes_nothing() {
    let env = Env::new();
    env.init_store_format(2);
    nightly_backups(&env, "app", 2);
    let before = store_state(&env.path("store"));
    let out = env.rv(&["prune", "--keep-last", "1"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("prune can delete data only in store format 3 or later"), "{}", stderr(&out));
    assert_eq!(store_state(&env.path("store")), before);
    // The dry run still plans there.
    assert_eq!(prune_json(&env, &["--keep-last", "1"])["snapshots_forgotten"], 1);
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
    env.rv_ok(&["forget", "app", "--snapshot", &snapshots[0], "--force"]);
    // The history started again from scratch and the old one pruned: the chain is now far
    // larger than the source, so the next backup is full, and the second snapshot's data
    // (its own pack and the one it inherited from the forgotten first) is needed by nothing
    // kept.
    let repo = env.path("app");
    git(&repo, &["checkout", "-q", "--orphan", "fresh"]);
    git(&repo, &["rm", "-rqf", "."]);
    commit_file(&repo, "later", "later", "later");
    git(&repo, &["branch", "-q", "-D", "main"]);
    git(&repo, &["reflog", "expire", "--expire=now", "--all"]);
    git(&repo, &["prune", "--expire=now"]);
    let full = env.backup("app", &repo);
    let listed: Value = serde_json::from_str(&env.rv_ok(&["snapshots", "--json", "app"])).unwrap();
    let latest = listed.as_array().unwrap().iter().find(|s| s["id"] == full.as_str()).unwrap();
    assert_eq!(latest["parent"], Value::Null, "a full snapshot: {latest}");
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

/// The manifest file of snapshot `id`.
fn manifest_file(store: &Path, id: &str) -> std::path::PathBuf {
    files_under(&store.join("snapshots"))
        .into_iter()
        .find(|f| f.file_name().unwrap().to_string_lossy().ends_with(id))
        .expect("manifest file")
}

/// Writes a copy of snapshot `id`'s manifest that says it was made at `at` (RFC 3339, UTC),
/// under the file name a snapshot made then has; returns its id. The copy names the same
/// packs, so it restores like the original.
fn reissue(store: &Path, id: &str, at: &str) -> String {
    let file = manifest_file(store, id);
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    manifest["created_at"] = at.into();
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    let new_id = blake3::hash(&bytes).to_hex().to_string();
    let when = chrono::DateTime::parse_from_rfc3339(at).unwrap().with_timezone(&chrono::Utc);
    let name = format!("{}-{new_id}", when.format("%Y%m%dT%H%M%S%.9fZ"));
    std::fs::write(file.parent().unwrap().join(name), bytes).unwrap();
    new_id
}

/// Ids of the snapshot manifests in the store.
fn manifest_ids(store: &Path) -> std::collections::BTreeSet<String> {
    files_under(&store.join("snapshots"))
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().rsplit('-').next().unwrap().to_owned())
        .collect()
}

/// Every chunk the store's manifests name.
fn named_chunks(store: &Path) -> std::collections::BTreeSet<String> {
    let mut named = std::collections::BTreeSet::new();
    for file in files_under(&store.join("snapshots")) {
        let manifest: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        for pack in manifest["packs"].as_array().unwrap() {
            for list in [&pack["pack"]["chunks"], &pack["index"]["chunks"]] {
                named.extend(list.as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()));
            }
        }
    }
    named
}

fn object_names(store: &Path) -> std::collections::BTreeSet<String> {
    store_objects(store).iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn each_keep_rule_and_their_union_keep_the_hand_computed_snapshots() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("app"));
    commit_file(&repo, "a", "a", "a");
    let original = env.backup("app", &repo);
    let store = env.path("store");
    // Mondays: 2026-01-05 and 2026-01-12 (ISO weeks 2 and 3).
    let dates = [
        ("a", "2025-01-01T10:00:00Z"),
        ("b", "2025-06-15T10:00:00Z"),
        ("c", "2025-12-31T23:00:00Z"),
        ("d", "2026-01-05T09:00:00Z"),
        ("e", "2026-01-06T09:00:00Z"),
        ("f", "2026-01-06T18:00:00Z"),
        ("g", "2026-01-12T08:00:00Z"),
        ("h", "2026-01-12T20:00:00Z"),
        ("i", "2026-01-13T07:00:00Z"),
        ("j", "2026-01-13T07:30:00Z"),
    ];
    let by_id: std::collections::HashMap<String, &str> =
        dates.iter().map(|(letter, at)| (reissue(&store, &original, at), *letter)).collect();
    std::fs::remove_file(manifest_file(&store, &original)).unwrap();
    let kept = |args: &[&str]| -> String {
        let report = prune_json(&env, args);
        let mut letters: Vec<&str> = ids(&report["repos"][0]["keep"]).iter().map(|id| by_id[id]).collect();
        letters.sort();
        letters.concat()
    };
    assert_eq!(kept(&["--keep-last", "3"]), "hij");
    assert_eq!(kept(&["--keep-hourly", "2"]), "hj", "i shares j's hour");
    assert_eq!(kept(&["--keep-daily", "3"]), "fhj");
    assert_eq!(kept(&["--keep-weekly", "2"]), "fj");
    assert_eq!(kept(&["--keep-monthly", "2"]), "cj");
    assert_eq!(kept(&["--keep-yearly", "3"]), "acj", "count left at the oldest keeps it");
    assert_eq!(kept(&["--keep-within", "1d"]), "ghij");
    assert_eq!(kept(&["--keep-last", "1"]), "j");
    let union = ["--keep-daily", "3", "--keep-monthly", "2", "--keep-yearly", "3"];
    assert_eq!(kept(&union), "acfhj");

    // The real prune keeps exactly those, and each still restores.
    let mut args = vec!["prune", "--json"];
    args.extend(union);
    let report: Value = serde_json::from_str(&env.rv_ok(&args)).unwrap();
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["snapshots_forgotten"], 5);
    let mut left: Vec<&str> = manifest_ids(&store).iter().map(|id| by_id[id]).collect();
    left.sort();
    assert_eq!(left.concat(), "acfhj");
    for id in manifest_ids(&store) {
        let dest = env.path(&format!("restored-{}", by_id[&id]));
        env.restore("app", &dest, Some(&id));
        assert_eq!(ref_state(&dest), ref_state(&repo));
        fsck(&dest);
    }
}

#[test]
fn a_real_prune_forgets_deletes_unnamed_data_and_kept_snapshots_restore_exactly() {
    let env = Env::new();
    env.init_store();
    let store = env.path("store");
    let app = new_repo(&env.path("app"));
    let mut recorded = Vec::new();
    for night in 0..4u64 {
        commit_file(&app, &format!("night{night}"), &noise_text(night, 40_000), "night");
        recorded.push((env.backup("app", &app), ref_state(&app)));
    }
    let lib = new_repo(&env.path("lib"));
    let mut lib_latest = None;
    for night in 0..3u64 {
        commit_file(&lib, "lib", &noise_text(100 + night, 20_000), "lib");
        lib_latest = Some((env.backup("lib", &lib), ref_state(&lib)));
    }
    std::fs::remove_dir_all(&lib).unwrap(); // gone from the source
    // A backup killed before it committed leaves chunks no snapshot names.
    let big = big_repo(&env.path("big"), 4, 3 << 20);
    let before = stored_bytes(&store);
    let mut killed = env.rv_command(&["backup", "--name", "big", &big.to_string_lossy()]).spawn().unwrap();
    assert!(wait_for_stored_bytes(&store, before + (2 << 20)));
    killed.kill().unwrap();
    killed.wait().unwrap();
    let orphans: Vec<String> = object_names(&store).difference(&named_chunks(&store)).cloned().collect();
    assert!(!orphans.is_empty());
    assert_eq!(snapshot_count(&store), 7, "the killed backup committed nothing");

    let report: Value = serde_json::from_str(&env.rv_ok(&["prune", "--json", "--keep-last", "2"])).unwrap();
    assert_eq!(report["snapshots_forgotten"], 3);
    assert_eq!(report["bytes_pending"], 0, "nothing runs: everything is deleted at once");
    assert!(report["objects_deleted"].as_u64().unwrap() >= orphans.len() as u64, "{report}");
    assert!(report["bytes_deleted"].as_u64().unwrap() > 0);
    assert_eq!(report["sessions_revoked"].as_array().unwrap().len(), 1, "the killed backup's session: {report}");
    let left = manifest_ids(&store);
    let lib_latest = lib_latest.unwrap();
    let expected: std::collections::BTreeSet<String> =
        [recorded[2].0.clone(), recorded[3].0.clone(), lib_latest.0.clone()].into_iter().collect();
    assert!(expected.is_subset(&left) && left.len() == 4, "{left:?}");
    let objects = object_names(&store);
    assert!(orphans.iter().all(|o| !objects.contains(o)), "the killed backup's chunks are deleted");
    assert!(named_chunks(&store).is_subset(&objects), "every chunk a kept snapshot names is in objects/");
    assert!(files_under(&store.join("trash")).is_empty() && files_under(&store.join("sessions")).is_empty());
    assert!(!store.join("locks/prune").exists());

    for (id, state) in &recorded[2..] {
        let dest = env.path(&format!("restored-{id}"));
        env.restore("app", &dest, Some(id));
        assert_eq!(&ref_state(&dest), state);
        fsck(&dest);
    }
    let dest = env.path("restored-lib");
    env.restore("lib", &dest, None);
    assert_eq!(ref_state(&dest), lib_latest.1);
    env.rv_ok(&["verify", "--deep"]);
}

#[test]
fn after_keep_last_1_of_twenty_nights_the_store_is_close_to_a_fresh_full_backup() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("app"));
    for night in 0..20u64 {
        commit_file(&repo, &format!("night{night}"), &noise_text(night, 60_000), "night");
        env.backup("app", &repo);
    }
    env.rv_ok(&["prune", "--keep-last", "1"]);
    let pruned = stored_bytes(&env.path("store"));
    let fresh = env.path("fresh");
    let fresh_store = fresh.to_string_lossy().into_owned();
    env.rv_ok(&["init", "--store", &fresh_store]);
    env.rv_ok(&["backup", "--store", &fresh_store, "--name", "app", &repo.to_string_lossy()]);
    let full = stored_bytes(&fresh);
    assert!(pruned * 10 <= full * 12, "pruned store {pruned} bytes, fresh full backup {full} bytes");
}

#[test]
fn a_second_prune_while_one_holds_the_lock_exits_1_naming_the_holder() {
    let env = Env::new();
    env.init_store();
    nightly_backups(&env, "app", 2);
    let holder = serde_json::json!({
        "host": "elsewhere", "pid": 1, "pid_start": null, "started_at": "2026-01-01T00:00:00Z"
    });
    std::fs::write(env.path("store/locks/prune"), holder.to_string()).unwrap();
    let out = env.rv(&["prune", "--keep-last", "1"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("another prune is running (pid 1 on elsewhere"), "{}", stderr(&out));
    assert_eq!(snapshot_count(&env.path("store")), 2);
}

/// A snapshot file that cannot be read at all (here: a directory in its place; in life an
/// I/O error or a permission) is not damage: `snapshots` says so instead of advising to
/// forget it, and `prune` forgets and deletes nothing (it cannot know what the repository's
/// latest snapshot is), exit 1, naming the file.
#[test]
fn an_unreadable_snapshot_file_is_an_error_of_the_store_not_damage() {
    let env = Env::new();
    env.init_store();
    let snapshots = nightly_backups(&env, "app", 3);
    let dir = env.path("store/snapshots").join(repovault::store::repo_key("app"));
    let newest = files_under(&dir).into_iter().find(|f| f.to_string_lossy().ends_with(&snapshots[2])).unwrap();
    std::fs::remove_file(&newest).unwrap();
    std::fs::create_dir(&newest).unwrap();
    let before = files_under(&env.path("store"));

    let out = env.rv(&["snapshots", "app"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("not damage"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("forget it with"), "{}", stderr(&out));

    let out = env.rv(&["prune", "--keep-last", "1"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains(&snapshots[2]), "names the file: {}", stderr(&out));
    assert_eq!(files_under(&env.path("store")), before, "nothing forgotten or deleted");
}

/// A NAME given twice is one repository: planned, counted and forgotten once.
#[test]
fn a_name_given_twice_is_pruned_once() {
    let env = Env::new();
    env.init_store();
    nightly_backups(&env, "app", 3);
    let report = prune_json(&env, &["--keep-last", "1", "app", "app"]);
    assert_eq!(report["repos"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["repos"][0]["forget"].as_array().unwrap().len(), 2, "{report}");
}

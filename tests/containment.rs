//! Damage containment: one damaged or forgotten snapshot affects only its own repository
//! and chain; `forget`; chain rules for the next backup; one repository's name never
//! chains onto another's data.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// The manifest file of snapshot `id` of `name`.
fn manifest(env: &Env, name: &str, id: &str) -> PathBuf {
    let dir = env.path("store/snapshots").join(repovault::store::repo_key(name));
    files_under(&dir)
        .into_iter()
        .find(|f| f.file_name().unwrap().to_string_lossy().ends_with(&format!("-{id}")))
        .unwrap_or_else(|| panic!("no manifest for snapshot {id} of {name}"))
}

/// Overwrites a manifest, as the issue's user found one.
fn damage(env: &Env, name: &str, id: &str) -> PathBuf {
    let file = manifest(env, name, id);
    std::fs::write(&file, b"overwritten by something else").unwrap();
    file
}

fn listed(env: &Env, name: &str) -> Vec<Value> {
    let out = env.rv(&["snapshots", name, "--json"]);
    serde_json::from_slice::<Value>(&out.stdout).expect("snapshots --json parses").as_array().unwrap().clone()
}

fn backup_json(env: &Env, name: &str, repo: &Path) -> Value {
    let out = env.rv_ok(&["backup", "--json", "--name", name, &repo.to_string_lossy()]);
    serde_json::from_str(&out).expect("backup --json parses")
}

/// Repositories `a` (two snapshots, the latest damaged) and `b` (one snapshot).
struct TwoRepos {
    env: Env,
    a: PathBuf,
    b: PathBuf,
    a_first: String,
    a_damaged: String,
    b_first: String,
}

fn two_repos_one_damaged() -> TwoRepos {
    let env = Env::new();
    env.init_store();
    let a = new_repo(&env.path("a"));
    commit_file(&a, "f", "one", "one");
    let a_first = env.backup("a", &a);
    commit_file(&a, "f", "two", "two");
    let a_damaged = env.backup("a", &a);
    let b = new_repo(&env.path("b"));
    commit_file(&b, "g", "b", "b");
    let b_first = env.backup("b", &b);
    damage(&env, "a", &a_damaged);
    TwoRepos { env, a, b, a_first, a_damaged, b_first }
}

#[test]
fn snapshots_lists_the_readable_ones_and_names_the_damaged_repository() {
    let t = two_repos_one_damaged();
    let out = t.env.rv(&["snapshots"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains(&t.a_first[..12]) && table.contains(&t.b_first[..12]), "{table}");
    let err = stderr(&out);
    assert!(err.contains("repository a:"), "names the repository: {err}");
    assert!(err.contains(&t.a_damaged), "names the snapshot: {err}");
    let file = manifest(&t.env, "a", &t.a_damaged);
    assert!(err.contains(&file.to_string_lossy().into_owned()), "names the file: {err}");

    let out = t.env.rv(&["snapshots", "--json"]);
    assert_eq!(code(&out), 1);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(ids.contains(&t.a_first.as_str()) && ids.contains(&t.b_first.as_str()));
    for field in ["id", "repo", "vcs", "created_at", "source_changed_at", "parent", "head", "refs"] {
        assert!(list[0].get(field).is_some(), "contract field {field}: {list}");
    }
    // Asked by name, the repository is named too.
    let out = t.env.rv(&["snapshots", "a"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("repository a:"), "{}", stderr(&out));
}

#[test]
fn backup_onto_a_damaged_latest_snapshot_fails_naming_it_and_others_back_up() {
    let t = two_repos_one_damaged();
    let before = snapshot_count(&t.env.path("store"));
    let out = t.env.rv(&["backup", "--name", "a", &t.a.to_string_lossy()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("repository a"), "{err}");
    assert!(err.contains(&format!("repovault forget a --snapshot {}", t.a_damaged)), "says the fix: {err}");
    assert_eq!(snapshot_count(&t.env.path("store")), before, "nothing written for a");

    commit_file(&t.b, "g", "b2", "b2");
    t.env.backup("b", &t.b);
    t.env.restore_matches("b", &t.env.path("out-b"), &t.b);
}

#[test]
fn forgetting_the_damaged_snapshot_lets_the_next_backup_chain_to_the_good_one() {
    let t = two_repos_one_damaged();
    let out = t.env.rv_ok(&["forget", "a", "--snapshot", &t.a_damaged[..10]]);
    assert!(out.contains(&t.a_damaged), "{out}");
    assert!(!manifest_exists(&t.env, "a", &t.a_damaged));
    assert_eq!(code(&t.env.rv(&["snapshots"])), 0, "no damage left");

    commit_file(&t.a, "f", "three", "three");
    let report = backup_json(&t.env, "a", &t.a);
    assert_eq!(report["parent"], t.a_first.as_str(), "{report}");
    t.env.restore_matches("a", &t.env.path("out-a"), &t.a);
}

fn manifest_exists(env: &Env, name: &str, id: &str) -> bool {
    let dir = env.path("store/snapshots").join(repovault::store::repo_key(name));
    files_under(&dir).iter().any(|f| f.to_string_lossy().ends_with(id))
}

/// A repository `r` with three snapshots in a store of `format` (before 3, each chained to
/// the one before).
fn three_snapshots(env: &Env, format: u32) -> (PathBuf, [String; 3]) {
    env.init_store_format(format);
    let repo = new_repo(&env.path("r"));
    let mut ids = Vec::new();
    for i in 0..3 {
        commit_file(&repo, "f", &format!("v{i}"), &format!("c{i}"));
        ids.push(env.backup("r", &repo));
    }
    (repo, ids.try_into().unwrap())
}

#[test]
fn forgetting_a_snapshot_later_ones_chain_to_is_refused_without_force() {
    let env = Env::new();
    let (_, [_, middle, last]) = three_snapshots(&env, 2);
    let out = env.rv(&["forget", "r", "--snapshot", &middle]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains(&last[..12]), "lists the later snapshot: {}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(manifest_exists(&env, "r", &middle), "nothing forgotten");
}

#[test]
fn forced_forget_marks_later_snapshots_unrestorable_and_the_next_backup_is_full() {
    let env = Env::new();
    let (repo, [first, middle, last]) = three_snapshots(&env, 2);
    let out = env.rv_ok(&["forget", "r", "--snapshot", &middle, "--force"]);
    assert!(out.contains(&last) && out.contains("can no longer be restored"), "{out}");

    let list = listed(&env, "r");
    let by_id = |id: &str| list.iter().find(|s| s["id"] == id).unwrap().clone();
    assert_eq!(by_id(&first)["restorable"], true);
    assert_eq!(by_id(&last)["restorable"], false, "{list:?}");
    let table = env.rv_ok(&["snapshots", "r"]);
    let last_row = table.lines().find(|l| l.starts_with(&last[..12])).unwrap();
    assert!(last_row.contains("NOT RESTORABLE"), "{table}");

    commit_file(&repo, "f", "v3", "c3");
    let report = backup_json(&env, "r", &repo);
    assert_eq!(report["parent"], Value::Null, "a full snapshot: {report}");
    env.restore_matches("r", &env.path("out"), &repo);
}

#[test]
fn backup_after_a_damaged_parent_is_full_and_restores() {
    let env = Env::new();
    let (repo, [first, _, _]) = three_snapshots(&env, 2);
    damage(&env, "r", &first);
    commit_file(&repo, "f", "v3", "c3");
    let report = backup_json(&env, "r", &repo);
    assert_eq!(report["parent"], Value::Null, "{report}");
    // Forget the damaged one so that listing is clean, then the full snapshot restores.
    env.rv_ok(&["forget", "r", "--snapshot", &first]);
    env.restore_matches("r", &env.path("out"), &repo);
}

#[test]
fn a_store_read_error_on_the_chain_fails_the_backup_instead_of_a_full_snapshot() {
    let env = Env::new();
    let (repo, [first, _, _]) = three_snapshots(&env, 2);
    // A manifest that cannot be read at all (not damaged content): an I/O error.
    let file = manifest(&env, "r", &first);
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    commit_file(&repo, "f", "v3", "c3");
    let before = snapshot_count(&env.path("store"));
    let out = env.rv(&["backup", "--name", "r", &repo.to_string_lossy()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(snapshot_count(&env.path("store")), before, "no snapshot written");
}

/// From format 3 on a snapshot names every pack it needs: forgetting older ones, even the
/// parent of the latest, needs no --force and leaves the others restorable, and the next
/// backup still builds on the latest.
#[test]
fn in_a_format_3_store_forgetting_any_snapshot_leaves_the_others_restorable() {
    let env = Env::new();
    let (repo, [first, middle, last]) = three_snapshots(&env, 3);
    let before_forget = ref_state(&repo);
    let out = env.rv_ok(&["forget", "r", "--snapshot", &middle, "--snapshot", &first]);
    assert!(!out.contains("can no longer be restored"), "{out}");
    let list = listed(&env, "r");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], last.as_str());
    assert_eq!(list[0]["restorable"], true);
    let dest = env.path("last");
    env.restore("r", &dest, Some(&last));
    assert_eq!(ref_state(&dest), before_forget);
    commit_file(&repo, "f", "v3", "c3");
    let report = backup_json(&env, "r", &repo);
    assert_eq!(report["parent"], last.as_str(), "incremental to the latest: {report}");
    env.restore_matches("r", &env.path("out"), &repo);
    assert_eq!(code(&env.rv(&["verify", "--deep"])), 0);
}

#[test]
fn an_ambiguous_prefix_lists_the_candidates_with_their_times() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("r"));
    commit_file(&repo, "f", "x", "c");
    // Sixteen first hex digits: two of seventeen snapshots share one.
    let mut ids: Vec<String> = Vec::new();
    let (one, two) = loop {
        let id = env.backup("r", &repo);
        if let Some(twin) = ids.iter().find(|other| other[..1] == id[..1]) {
            break (twin.clone(), id);
        }
        ids.push(id);
    };
    let out = env.rv(&["forget", "r", "--snapshot", &one[..1]]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&one) && err.contains(&two), "{err}");
    assert!(err.contains("Z)"), "times shown: {err}");
    assert!(manifest_exists(&env, "r", &one) && manifest_exists(&env, "r", &two));
}

#[test]
fn a_default_name_held_for_another_path_is_refused_and_name_allows_it() {
    let env = Env::new();
    env.init_store();
    let ours = new_repo(&env.path("forge/s1"));
    commit_file(&ours, "f", "ours", "ours");
    let theirs = new_repo(&env.path("other/s1"));
    commit_file(&theirs, "f", "theirs", "theirs");
    env.rv_ok(&["backup", &ours.to_string_lossy()]);
    // The same repository again, by a relative path: the same source.
    env.rv_ok(&["backup", "forge/s1/"]);

    let before = snapshot_count(&env.path("store"));
    let out = env.rv(&["backup", &theirs.to_string_lossy()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    let ours_canonical = std::fs::canonicalize(&ours).unwrap();
    let theirs_canonical = std::fs::canonicalize(&theirs).unwrap();
    assert!(err.contains(&*ours_canonical.to_string_lossy()), "names the stored path: {err}");
    assert!(err.contains(&*theirs_canonical.to_string_lossy()), "names the new path: {err}");
    assert!(err.contains("--name"), "{err}");
    assert_eq!(snapshot_count(&env.path("store")), before, "no snapshot written");

    // Chosen on purpose (a repository that moved), the name continues the chain.
    env.rv_ok(&["backup", "--name", "s1", &theirs.to_string_lossy()]);
    env.restore_matches("s1", &env.path("out"), &theirs);
}

#[test]
fn backup_json_reports_what_the_backup_did() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("r"));
    commit_file(&repo, "f", "x", "c");
    let first = backup_json(&env, "r", &repo);
    let mut keys: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["bytes_read", "bytes_stored", "objects", "parent", "repo", "seconds", "snapshot"]);
    assert_eq!(first["repo"], "r");
    assert_eq!(first["parent"], Value::Null);
    assert!(first["objects"].as_u64().unwrap() >= 3, "{first}");
    assert!(first["bytes_stored"].as_u64().unwrap() > 0);
    assert!(first["seconds"].as_f64().is_some());
    commit_file(&repo, "f", "y", "c2");
    let second = backup_json(&env, "r", &repo);
    assert_eq!(second["parent"], first["snapshot"]);
    let ids: Vec<Value> = listed(&env, "r").iter().map(|s| s["id"].clone()).collect();
    assert_eq!(ids, [first["snapshot"].clone(), second["snapshot"].clone()]);
}

#[test]
fn init_on_a_regular_file_is_a_usage_error_naming_it() {
    let env = Env::new();
    let file = env.path("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = env.rv(&["init", "--store", &file.to_string_lossy()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains(&*file.to_string_lossy()), "{}", stderr(&out));
}

#[test]
fn snapshots_table_shows_created_times_as_rfc3339_utc_seconds() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("r"));
    commit_file(&repo, "f", "x", "c");
    env.backup("r", &repo);
    let created = listed(&env, "r")[0]["created_at"].as_str().unwrap().to_owned();
    let table = env.rv_ok(&["snapshots"]);
    let row = table.lines().nth(1).unwrap();
    let shown = row.split_whitespace().nth(1).unwrap();
    assert_eq!(shown, created, "{table}");
    let b = shown.as_bytes();
    assert_eq!(b.len(), 20, "{shown}");
    assert!(b[10] == b'T' && b[13] == b':' && b[16] == b':' && b[19] == b'Z', "{shown}");
}

/// Whether object `id` exists in `repo`.
fn has_object(repo: &Path, id: &str) -> bool {
    std::process::Command::new("git").args(["cat-file", "-e", id]).current_dir(repo).status().unwrap().success()
}

#[test]
fn run_does_not_chain_a_repository_onto_another_repository_of_the_same_name() {
    let env = Env::new();
    env.init_store();
    let ours = new_repo(&env.path("ca/s1"));
    let our_commit = commit_file(&ours, "f", "customer a's data", "customer a");
    env.rv_ok(&["backup", "ca/s1"]);
    let theirs = new_repo(&env.path("cb/s1"));
    commit_file(&theirs, "g", "customer b's data", "customer b");

    let night = env.rv(&["run", "--scan", "cb"]);
    assert_eq!(code(&night), 0, "{}", stderr(&night));
    assert!(stderr(&night).contains("full snapshot"), "the operator is told: {}", stderr(&night));
    let list = listed(&env, "s1");
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[1]["parent"], Value::Null, "not chained to the other repository: {list:?}");

    let out = env.path("out");
    env.restore_matches("s1", &out, &theirs);
    assert!(!has_object(&out, &our_commit), "the restore holds no object of the other repository");
}

#[test]
fn backup_with_a_name_given_on_purpose_still_chains_a_moved_repository() {
    let env = Env::new();
    env.init_store();
    let old_place = new_repo(&env.path("forge/s1"));
    commit_file(&old_place, "f", "x", "first");
    let first = env.rv_ok(&["backup", "forge/s1"]).trim().to_owned();
    let new_place = env.path("moved/s1");
    std::fs::create_dir_all(new_place.parent().unwrap()).unwrap();
    std::fs::rename(&old_place, &new_place).unwrap();
    commit_file(&new_place, "f", "y", "after the move");

    let report = backup_json(&env, "s1", &new_place);
    assert_eq!(report["parent"], first.as_str(), "{report}");
    env.restore_matches("s1", &env.path("out"), &new_place);
}

#[test]
fn snapshots_of_a_name_not_in_the_store_is_a_usage_error_naming_it() {
    let env = Env::new();
    env.init_store();
    let out = env.rv(&["snapshots", "--json"]);
    assert_eq!(code(&out), 0, "an empty store lists nothing: {}", stderr(&out));
    let out = env.rv(&["snapshots"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let repo = new_repo(&env.path("r"));
    commit_file(&repo, "f", "x", "c");
    env.backup("r", &repo);
    for args in [&["snapshots", "nosuch.git"][..], &["snapshots", "--json", "nosuch.git"]] {
        let out = env.rv(args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("nosuch.git") && stderr(&out).contains("not in store"), "{}", stderr(&out));
        assert!(out.stdout.is_empty(), "no empty table that passes for a clean listing");
    }
}

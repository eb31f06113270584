//! A restore is one compact pack holding what the snapshot's refs reach, however many
//! nightly snapshots are behind it (issue 9).

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use common::*;

/// The object ids a repository holds, loose or packed, reachable or not.
fn all_objects(repo: &Path) -> BTreeSet<String> {
    git(repo, &["cat-file", "--batch-all-objects", "--batch-check=%(objectname)"]).lines().map(str::to_owned).collect()
}

/// The object ids `git rev-list --objects --all` lists: what the refs and HEAD reach.
fn reachable_objects(repo: &Path) -> BTreeSet<String> {
    git(repo, &["rev-list", "--objects", "--all"]).lines().map(|l| l.split(' ').next().unwrap().to_owned()).collect()
}

/// `git count-objects -v` as name -> value.
fn count_objects(repo: &Path) -> std::collections::BTreeMap<String, u64> {
    git(repo, &["count-objects", "-v"])
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.trim().parse().unwrap()))
        .collect()
}

fn pack_files(repo: &Path) -> Vec<PathBuf> {
    files_under(&git_dir(repo).join("objects/pack"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect()
}

/// Asserts what every restore must give: one pack, nothing loose, `git fsck --strict` clean
/// and no unreachable object.
fn assert_one_clean_pack(repo: &Path) {
    let counts = count_objects(repo);
    assert_eq!(counts["packs"], 1, "one pack: {counts:?}");
    assert_eq!(counts["count"], 0, "no loose objects: {counts:?}");
    fsck(repo);
    let unreachable = git(repo, &["fsck", "--unreachable", "--no-reflogs"]);
    assert_eq!(unreachable, "", "nothing unreachable");
}

#[test]
fn thirty_nights_restore_to_one_compact_pack_with_every_reachable_object() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    let mut core = noise_text(1, 30_000);
    let mut core_path = "src/core.txt";
    commit_file(&repo, core_path, &core, "start");
    for night in 0..32u64 {
        // Every night edits a large file in place (a delta against last night's version,
        // in last night's pack) and touches a small one.
        core.insert_str((night as usize * 911) % core.len(), &noise_text(100 + night, 200));
        commit_file(&repo, core_path, &core, &format!("night {night}"));
        commit_file(&repo, &format!("notes/n{}.txt", night % 5), &noise_text(200 + night, 3_000), "notes");
        if night % 6 == 3 {
            git(&repo, &["checkout", "-q", "-b", &format!("feature{night}")]);
            commit_file(&repo, &format!("feature/{night}.txt"), &noise_text(300 + night, 2_000), "feature");
            git(&repo, &["checkout", "-q", "main"]);
            git(&repo, &["merge", "-q", "--no-ff", "-m", "merge", &format!("feature{night}")]);
        }
        if night == 10 {
            git(&repo, &["mv", core_path, "src/renamed.txt"]);
            git(&repo, &["commit", "-q", "-m", "rename"]);
            core_path = "src/renamed.txt";
        }
        if night == 12 {
            git(&repo, &["checkout", "-q", "-b", "doomed"]);
            commit_file(&repo, "doomed.txt", &noise_text(400, 5_000), "doomed");
            git(&repo, &["checkout", "-q", "main"]);
        }
        if night == 20 {
            git(&repo, &["branch", "-D", "doomed"]);
            git(&repo, &["tag", "-a", "v1", "-m", "v1"]);
        }
        if night % 8 == 7 {
            // As a forge's `gc --auto` does now and then: a full snapshot (format 3 takes one
            // when the later packs grow) copies the deltas git made.
            git(&repo, &["gc", "-q"]);
        }
        env.backup("src", &repo);
    }
    let dest = env.path("restored.git");
    env.restore("src", &dest, None);
    assert_eq!(ref_state(&dest), ref_state(&repo));
    assert_one_clean_pack(&dest);
    // Exactly what the refs reach: the deleted branch's commit is in the store but not here.
    assert_eq!(all_objects(&dest), reachable_objects(&repo));

    let repacked = env.path("repacked.git");
    git(env.dir.path(), &["clone", "-q", "--mirror", &repo.to_string_lossy(), &repacked.to_string_lossy()]);
    git(&repacked, &["repack", "-q", "-adf"]);
    let size = |repo: &Path| pack_files(repo).iter().map(|p| p.metadata().unwrap().len()).sum::<u64>();
    let (restored, source) = (size(&dest), size(&repacked));
    eprintln!("restored pack {restored} bytes, source repacked -adf {source} bytes");
    // Bounded by what the store holds: a format 3 full snapshot of loose objects has no
    // deltas (a backup-side limit), so the bound is looser than the 1.2x a gc-fresh source gives.
    assert!(restored <= source * 3, "restored pack is {restored} bytes, the source repacked {source}");
}

#[test]
fn a_branch_force_pushed_away_does_not_come_back_in_a_later_restore() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "README", "hello\n", "start");
    git(&repo, &["checkout", "-q", "-b", "leak"]);
    let secret = format!("AWS_SECRET={}\n", noise_text(7, 40));
    commit_file(&repo, "config/secret.env", &secret, "oops");
    let secret_blob = git(&repo, &["rev-parse", "HEAD:config/secret.env"]).trim().to_owned();
    git(&repo, &["checkout", "-q", "main"]);
    git(&repo, &["checkout", "-q", "-b", "other"]);
    commit_file(&repo, "other.txt", "other\n", "other");
    git(&repo, &["checkout", "-q", "main"]);
    let first = env.backup("src", &repo);

    // The leak is force-pushed away, another branch deleted, work goes on.
    git(&repo, &["branch", "-f", "leak", "main"]);
    git(&repo, &["branch", "-D", "other"]);
    commit_file(&repo, "README", "hello again\n", "more");
    env.backup("src", &repo);

    let latest = env.path("latest.git");
    env.restore("src", &latest, None);
    assert_eq!(ref_state(&latest), ref_state(&repo));
    assert!(!all_objects(&latest).contains(&secret_blob), "the secret blob is not in the restored repository");
    assert_one_clean_pack(&latest);
    assert_eq!(all_objects(&latest), reachable_objects(&repo));

    let before = env.path("before.git");
    env.restore("src", &before, Some(&first));
    assert!(all_objects(&before).contains(&secret_blob), "the snapshot taken before the force-push still has it");
    assert_one_clean_pack(&before);
}

/// In a format 2 store (chains grow with the nights; format 3 takes a full snapshot before
/// they get long), a chain deeper than 128 is cut to git's default of 50 when restored.
#[test]
fn a_file_changed_every_night_restores_with_delta_chains_at_most_50_deep() {
    let env = Env::new();
    env.init_store_format(2);
    let repo = new_repo(&env.path("src"));
    // A changelog: each night's version is stored as a delta against the night before's.
    let mut log = noise_text(1, 20_000);
    for night in 0..140u64 {
        log.insert_str(0, &format!("{}\n", noise_text(100 + night, 80)));
        commit_file(&repo, "CHANGELOG", &log, &format!("night {night}"));
        env.backup("src", &repo);
    }
    let dest = env.path("restored.git");
    env.restore("src", &dest, None);
    assert_eq!(ref_state(&dest), ref_state(&repo));
    assert_one_clean_pack(&dest);
    let longest = max_delta_chain(&dest);
    assert!(longest <= 50, "the longest delta chain is {longest}");
}

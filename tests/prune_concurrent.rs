//! `prune` while backups run, a backup stalled past its session's life, and prune killed at
//! chosen points: the safety argument of docs/FORMAT.md ("Prune") against the real binary.

mod common;

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

fn manifest_files(store: &Path) -> Vec<std::path::PathBuf> {
    files_under(&store.join("snapshots"))
}

fn id_of(file: &Path) -> String {
    file.file_name().unwrap().to_string_lossy().rsplit('-').next().unwrap().to_owned()
}

/// Every chunk the store's manifests name.
fn named_chunks(store: &Path) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for file in manifest_files(store) {
        let manifest: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        for pack in manifest["packs"].as_array().unwrap() {
            for list in [&pack["pack"]["chunks"], &pack["index"]["chunks"]] {
                named.extend(list.as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()));
            }
        }
    }
    named
}

fn object_names(store: &Path) -> BTreeSet<String> {
    store_objects(store).iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

fn repo_of(file: &Path) -> String {
    let manifest: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    manifest["repo"].as_str().unwrap().to_owned()
}

/// Restores every snapshot still in the store at `store` and checks it against the refs
/// recorded when it was made.
fn every_snapshot_restores_as_recorded(env: &Env, store: &str, recorded: &HashMap<String, String>) {
    for file in manifest_files(Path::new(store)) {
        let id = id_of(&file);
        let state = recorded.get(&id).unwrap_or_else(|| panic!("snapshot {id} was not made by this test"));
        let dest = env.path(&format!("restored-{}", rand_suffix()));
        let dest_text = dest.to_string_lossy().into_owned();
        env.rv_ok(&["restore", "--store", store, &repo_of(&file), &dest_text, "--at", &id]);
        assert_eq!(&ref_state(&dest), state, "snapshot {id}");
        fsck(&dest);
        std::fs::remove_dir_all(&dest).unwrap();
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed).to_string()
}

#[test]
fn backups_from_two_processes_and_prune_in_a_loop_leave_every_snapshot_restorable() {
    let env = Env::new();
    env.init_store();
    let repos: Vec<(String, std::path::PathBuf)> = (0..4)
        .map(|i| {
            let name = format!("r{i}");
            let repo = new_repo(&env.path(&name));
            commit_file(&repo, "start", &noise_text(1000 + i, 30_000), "start");
            (name, repo)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let recorded = std::thread::scope(|scope| {
        let backups: Vec<_> = repos
            .chunks(2)
            .enumerate()
            .map(|(worker, mine)| {
                let env = &env;
                scope.spawn(move || {
                    let mut made = Vec::new();
                    let mut night = 0u64;
                    while Instant::now() < deadline {
                        for (name, repo) in mine {
                            night += 1;
                            let seed = worker as u64 * 1_000_000 + night;
                            rewrite_last_commit(repo, "night", &noise_text(seed, 25_000));
                            made.push((env.backup(name, repo), ref_state(repo)));
                        }
                    }
                    made
                })
            })
            .collect();
        let env = &env;
        let pruner = scope.spawn(move || {
            let (mut runs, mut deleted) = (0, 0);
            while Instant::now() < deadline {
                let out = env.rv(&["prune", "--json", "--keep-last", "2"]);
                assert_eq!(code(&out), 0, "{}", stderr(&out));
                let report: Value = serde_json::from_slice(&out.stdout).unwrap();
                deleted += report["objects_deleted"].as_u64().unwrap();
                runs += 1;
            }
            (runs, deleted)
        });
        let (runs, deleted) = pruner.join().unwrap();
        assert!(runs >= 3, "prune ran {runs} times");
        assert!(deleted > 0, "the prunes deleted nothing: the test would prove nothing");
        backups.into_iter().flat_map(|b| b.join().unwrap()).collect::<HashMap<String, String>>()
    });
    assert!(recorded.len() >= 8, "{} backups", recorded.len());
    env.rv_ok(&["verify", "--deep"]);
    every_snapshot_restores_as_recorded(&env, &env.store(), &recorded);
}

#[test]
fn a_backup_stalled_past_its_session_is_revoked_and_cannot_commit() {
    let env = Env::new();
    env.init_store();
    let store = env.path("store");
    let small = new_repo(&env.path("small"));
    commit_file(&small, "a", "a", "a");
    env.backup("small", &small);
    let big = big_repo(&env.path("big"), 8, 4 << 20);
    let before = stored_bytes(&store);
    let backup = env
        .rv_command(&["backup", "--name", "big", &big.to_string_lossy()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for_stored_bytes(&store, before + (6 << 20)));
    let pid = backup.id() as i32;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    assert_eq!(
        snapshot_count(&store),
        1,
        "the backup committed before it was stopped: the big repository is too small"
    );
    let alive: Vec<_> = files_under(&store.join("sessions")).into_iter().filter(|f| f.ends_with("alive")).collect();
    assert_eq!(alive.len(), 1, "the stopped backup's session: {alive:?}");
    let touched = Command::new("touch").arg("-d").arg("2 hours ago").arg(&alive[0]).status().unwrap();
    assert!(touched.success());

    let report: Value = serde_json::from_str(&env.rv_ok(&["prune", "--json", "--keep-last", "1"])).unwrap();
    assert_eq!(report["sessions_revoked"].as_array().unwrap().len(), 1, "{report}");
    assert!(report["objects_deleted"].as_u64().unwrap() > 0, "the stalled backup's chunks are deleted: {report}");
    assert_eq!(report["bytes_pending"], 0, "{report}");

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let out = backup.wait_with_output().unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("the snapshot was not committed"), "{}", stderr(&out));
    assert!(stderr(&out).contains("prune revoked its session"), "{}", stderr(&out));
    assert_eq!(snapshot_count(&store), 1, "no snapshot of the stalled backup");
    assert!(named_chunks(&store).is_subset(&object_names(&store)));
    env.rv_ok(&["verify", "--deep"]);
    // Run again, it backs up.
    env.backup("big", &big);
    env.rv_ok(&["verify"]);
}

/// Two backups of one repository overlap: A reads the refs, stalls, and commits after B,
/// which read newer refs. B's snapshot is the latest (snapshots are stamped with when their
/// refs were read), so `restore` gives the newer state and `prune --keep-last 1` keeps it.
#[test]
fn of_two_overlapping_backups_the_one_with_newer_refs_is_the_latest() {
    let env = Env::new();
    env.init_store();
    let store = env.path("store");
    let big = big_repo(&env.path("big"), 8, 4 << 20);
    let backup_a = env
        .rv_command(&["backup", "--name", "big", &big.to_string_lossy()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for_stored_bytes(&store, 6 << 20), "backup A is writing: it has read the refs");
    let pid = backup_a.id() as i32;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    assert_eq!(snapshot_count(&store), 0, "backup A committed before it was stopped");
    commit_file(&big, "after-a", "newer", "a push while A is stalled");
    let newer = ref_state(&big);
    let id_b = env.backup("big", &big);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let out = backup_a.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(snapshot_count(&store), 2);

    let listed: Vec<Value> = serde_json::from_str(&env.rv_ok(&["snapshots", "--json", "big"])).unwrap();
    assert_eq!(listed.last().unwrap()["id"], id_b.as_str(), "B read the newer refs: {listed:?}");
    env.rv_ok(&["prune", "--keep-last", "1"]);
    let dest = env.path("restored");
    env.restore("big", &dest, None);
    assert_eq!(ref_state(&dest), newer, "the newer state survives the prune");
}

/// The syscalls prune's steps are made of: renames (moves into and out of trash, commits of
/// the files it writes) and unlinks (forgetting, deleting).
const RENAMES: &str = "rename,renameat,renameat2";
const UNLINKS: &str = "unlink,unlinkat";

/// How many `syscalls` a prune of a copy of `template` makes.
fn count_syscalls(env: &Env, template: &Path, syscalls: &str) -> usize {
    let store = env.path("counted");
    copy_store(template, &store);
    let trace = env.path("trace");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .args(["-e", &format!("trace={syscalls}")])
        .arg(env!("CARGO_BIN_EXE_repovault"))
        .args(["prune", "--keep-last", "1", "--store"])
        .arg(&store)
        .output()
        .expect("strace is installed (scripts/test installs it)");
    assert!(out.status.success(), "{}", stderr(&out));
    let count = std::fs::read_to_string(&trace).unwrap().lines().filter(|l| l.contains('(')).count();
    std::fs::remove_dir_all(&store).unwrap();
    count
}

fn copy_store(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success());
}

#[test]
fn prune_killed_at_any_step_leaves_a_sound_store_that_the_next_prune_finishes() {
    let env = Env::new();
    env.init_store();
    let mut recorded = HashMap::new();
    for name in ["app", "lib"] {
        let repo = new_repo(&env.path(name));
        for night in 0..8u64 {
            rewrite_last_commit(&repo, "night", &noise_text(night + name.len() as u64 * 100, 50_000));
            recorded.insert(env.backup(name, &repo), ref_state(&repo));
        }
    }
    let template = env.path("store");
    let clean = env.path("clean");
    copy_store(&template, &clean);
    let clean_text = clean.to_string_lossy().into_owned();
    env.rv_ok(&["prune", "--keep-last", "1", "--store", &clean_text]);
    let expected = (manifest_files(&clean).iter().map(|f| id_of(f)).collect::<BTreeSet<_>>(), object_names(&clean));
    assert!(object_names(&template).len() > expected.1.len(), "the prune must have something to delete");

    let mut points = Vec::new();
    for syscalls in [RENAMES, UNLINKS] {
        let total = count_syscalls(&env, &template, syscalls);
        assert!(total >= 10, "{total} {syscalls}");
        for fifth in 1..=4 {
            points.push((syscalls, total * fifth / 5));
        }
    }
    for (syscalls, when) in points {
        let store = env.path(&format!("killed-{}-{when}", syscalls.len()));
        copy_store(&template, &store);
        let store_text = store.to_string_lossy().into_owned();
        let out = Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-e", &format!("trace={syscalls}")])
            .args(["-e", &format!("inject={syscalls}:signal=KILL:when={when}")])
            .arg(env!("CARGO_BIN_EXE_repovault"))
            .args(["prune", "--keep-last", "1", "--store", &store_text])
            .output()
            .unwrap();
        assert!(!out.status.success(), "the prune was not killed at {syscalls} #{when}: {}", stderr(&out));
        let verify = env.rv(&["verify", "--deep", "--store", &store_text]);
        assert_eq!(code(&verify), 0, "killed at {syscalls} #{when}: {}", stderr(&verify));
        every_snapshot_restores_as_recorded(&env, &store_text, &recorded);
        env.rv_ok(&["prune", "--keep-last", "1", "--store", &store_text]);
        let after = (manifest_files(&store).iter().map(|f| id_of(f)).collect::<BTreeSet<_>>(), object_names(&store));
        assert_eq!(after, expected, "killed at {syscalls} #{when}: the next prune did not finish the job");
        assert!(files_under(&store.join("trash")).is_empty(), "killed at {syscalls} #{when}");
    }
}

//! What `verify` reports: every snapshot and repository that one problem makes
//! unrestorable (shared objects, chains), and which failures are not store damage at all
//! (an unknown NAME, a missing or full scratch directory).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use common::*;

/// The snapshots of the store as `(repo, id)` with their manifests, read from the files
/// (an independent view of what the store holds).
fn manifests(store: &Path) -> Vec<(String, String, serde_json::Value)> {
    files_under(&store.join("snapshots"))
        .into_iter()
        .map(|file| {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let id = name.split_once('-').unwrap().1.to_owned();
            let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            (manifest["repo"].as_str().unwrap().to_owned(), id, manifest)
        })
        .collect()
}

/// Every chunk a manifest names (packs and their indexes).
fn chunks_of(manifest: &serde_json::Value) -> BTreeSet<String> {
    let mut chunks = BTreeSet::new();
    for pack in manifest["packs"].as_array().unwrap() {
        for list in [&pack["pack"], &pack["index"]] {
            for chunk in list["chunks"].as_array().unwrap() {
                chunks.insert(chunk.as_str().unwrap().to_owned());
            }
        }
    }
    chunks
}

fn object_file(store: &Path, id: &str) -> PathBuf {
    store.join("objects").join(&id[..2]).join(id)
}

/// Flips one byte in the middle of a stored object.
fn flip_a_byte(store: &Path, id: &str) {
    let path = object_file(store, id);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
}

/// Commits `count` small changes (a line more each time), backing up after each; returns
/// the snapshot ids.
fn small_commits_backed_up(env: &Env, name: &str, repo: &Path, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let notes = std::fs::read_to_string(repo.join("notes.txt")).unwrap_or_default();
            let change = notes.lines().count();
            commit_file(repo, "notes.txt", &format!("{notes}{name} change {change}\n"), &format!("change {change}"));
            env.backup(name, repo)
        })
        .collect()
}

/// A repository holding `big` (the same incompressible file in every repository made with
/// it, so its chunks are shared in the store), backed up once.
fn repo_with_big_file(env: &Env, name: &str, big: &[u8]) -> (PathBuf, String) {
    let repo = new_repo(&env.path(name));
    std::fs::write(repo.join("big.bin"), big).unwrap();
    commit_file(&repo, "readme", &format!("{name}\n"), "big file");
    let id = env.backup(name, &repo);
    (repo, id)
}

/// Snapshots as `(repo, snapshot id)`.
type SnapshotSet = BTreeSet<(String, String)>;

/// The `(repo, snapshot)` pairs of the report's problems, and of its `unrestorable` list.
fn listed(report: &serde_json::Value) -> (SnapshotSet, SnapshotSet) {
    let pairs = |items: &serde_json::Value| -> SnapshotSet {
        items
            .as_array()
            .unwrap_or_else(|| panic!("an array in {report}"))
            .iter()
            .filter(|p| p["snapshot"].is_string())
            .map(|p| (p["repo"].as_str().unwrap().to_owned(), p["snapshot"].as_str().unwrap().to_owned()))
            .collect()
    };
    (pairs(&report["problems"]), pairs(&report["unrestorable"]))
}

/// One flipped byte in a chunk five repositories share, in a format 2 store (snapshots
/// chained to their parents): every snapshot that names it and every later snapshot chained
/// to one of those is listed, each of them indeed fails to restore, and the snapshots not
/// listed restore.
#[test]
fn damage_in_a_shared_chunk_lists_every_repository_and_every_chained_snapshot() {
    shared_chunk_damage(2);
}

/// The same in a format 3 store, where every later snapshot names the packs it inherited:
/// the same snapshots are listed, each for the damaged object itself.
#[test]
fn damage_in_a_shared_chunk_lists_every_snapshot_that_inherited_it() {
    shared_chunk_damage(3);
}

fn shared_chunk_damage(format: u32) {
    let env = Env::new();
    env.init_store_format(format);
    let store = env.path("store");
    let big = noise_bytes(7, 6_000_000);
    let mut unrestorable = BTreeSet::new();
    let mut restorable = BTreeSet::new();
    let mut holding_big = Vec::new();
    for name in ["one", "two", "three", "four", "five"] {
        let (repo, first) = repo_with_big_file(&env, name, &big);
        holding_big.push(first.clone());
        unrestorable.insert((name.to_owned(), first));
        for id in small_commits_backed_up(&env, name, &repo, 3) {
            unrestorable.insert((name.to_owned(), id));
        }
    }
    // A repository that got the big file later: its earlier snapshot stays restorable.
    let late = new_repo(&env.path("late"));
    for id in small_commits_backed_up(&env, "late", &late, 1) {
        restorable.insert(("late".to_owned(), id));
    }
    std::fs::write(late.join("big.bin"), &big).unwrap();
    commit_file(&late, "readme", "late\n", "big file");
    let late_big = env.backup("late", &late);
    holding_big.push(late_big.clone());
    unrestorable.insert(("late".to_owned(), late_big));
    for id in small_commits_backed_up(&env, "late", &late, 2) {
        unrestorable.insert(("late".to_owned(), id));
    }
    let other = new_repo(&env.path("other"));
    for id in small_commits_backed_up(&env, "other", &other, 2) {
        restorable.insert(("other".to_owned(), id));
    }

    let all = manifests(&store);
    let shared = holding_big
        .iter()
        .map(|id| chunks_of(&all.iter().find(|(_, i, _)| i == id).unwrap().2))
        .reduce(|a, b| a.intersection(&b).cloned().collect())
        .unwrap();
    let victim = shared.iter().next().expect("the big file's chunks are shared by the six snapshots").clone();
    let naming_victim: BTreeSet<&str> =
        all.iter().filter(|(_, _, m)| chunks_of(m).contains(&victim)).map(|(_, id, _)| id.as_str()).collect();
    let expected_naming: BTreeSet<&str> = if format >= 3 {
        unrestorable.iter().map(|(_, id)| id.as_str()).collect()
    } else {
        holding_big.iter().map(String::as_str).collect()
    };
    assert_eq!(naming_victim, expected_naming, "the snapshots that name the big file's chunks");
    assert_eq!(code(&env.rv(&["verify"])), 0);
    flip_a_byte(&store, &victim);

    let out = env.rv(&["verify", "--json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let (with_problems, listed_unrestorable) = listed(&report);
    assert_eq!(with_problems, unrestorable, "{report:#}");
    assert_eq!(listed_unrestorable, unrestorable, "{report:#}");
    for problem in report["problems"].as_array().unwrap() {
        let snapshot = problem["snapshot"].as_str().unwrap_or_default();
        if format >= 3 || holding_big.iter().any(|id| id == snapshot) {
            assert_eq!(problem["object"], victim.as_str(), "{problem}");
            assert!(problem["problem"].as_str().unwrap().contains("damaged"), "{problem}");
        } else {
            let text = problem["problem"].as_str().unwrap();
            assert!(text.contains("cannot be restored") && text.contains(&victim[..12]), "{problem}");
        }
    }
    assert_eq!(report["problems"].as_array().unwrap().len(), unrestorable.len(), "one problem each: {report:#}");

    for (i, (repo, id)) in unrestorable.iter().enumerate() {
        let dest = env.path(&format!("broken-{i}"));
        let out = env.rv(&["restore", repo, &dest.to_string_lossy(), "--at", id]);
        assert_ne!(code(&out), 0, "{repo} at {id} is listed as unrestorable but restored");
    }
    for (i, (repo, id)) in restorable.iter().enumerate() {
        let dest = env.path(&format!("fine-{i}"));
        env.restore(repo, &dest, Some(id));
        fsck(&dest);
    }
}

/// With NAMEs, the same report within those repositories: a repository sharing the damaged
/// chunk that was not named is not checked, nor listed.
#[test]
fn damage_in_a_shared_chunk_is_reported_within_the_named_repositories() {
    let env = Env::new();
    env.init_store();
    let store = env.path("store");
    let big = noise_bytes(11, 6_000_000);
    let mut chains = BTreeMap::new();
    for name in ["named", "also-named", "not-named"] {
        let (repo, first) = repo_with_big_file(&env, name, &big);
        let mut ids = vec![first];
        ids.extend(small_commits_backed_up(&env, name, &repo, 2));
        chains.insert(name, ids);
    }
    let all = manifests(&store);
    let shared = chains
        .values()
        .map(|ids| chunks_of(&all.iter().find(|(_, i, _)| *i == ids[0]).unwrap().2))
        .reduce(|a, b| a.intersection(&b).cloned().collect())
        .unwrap();
    flip_a_byte(&store, shared.iter().next().expect("a shared chunk"));

    let out = env.rv(&["verify", "named", "also-named", "--json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["repos_checked"], 2, "{report:#}");
    let expected: SnapshotSet = ["named", "also-named"]
        .iter()
        .flat_map(|name| chains[name].iter().map(|id| (name.to_string(), id.clone())))
        .collect();
    let (with_problems, listed_unrestorable) = listed(&report);
    assert_eq!(with_problems, expected, "{report:#}");
    assert_eq!(listed_unrestorable, expected, "{report:#}");
}

/// Text output: one line per problem on stderr naming repository and snapshot, and a
/// summary saying how many snapshots of how many repositories cannot be restored.
#[test]
fn text_report_has_a_line_per_problem_and_a_summary_of_what_cannot_be_restored() {
    let env = Env::new();
    env.init_store();
    let store = env.path("store");
    let big = noise_bytes(5, 6_000_000);
    let mut firsts = Vec::new();
    for name in ["left", "right"] {
        let (repo, first) = repo_with_big_file(&env, name, &big);
        small_commits_backed_up(&env, name, &repo, 2);
        firsts.push(first);
    }
    let all = manifests(&store);
    let shared = firsts
        .iter()
        .map(|id| chunks_of(&all.iter().find(|(_, i, _)| i == id).unwrap().2))
        .reduce(|a, b| a.intersection(&b).cloned().collect())
        .unwrap();
    flip_a_byte(&store, shared.iter().next().expect("a shared chunk"));

    let out = env.rv(&["verify"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let errors = stderr(&out);
    let problem_lines: Vec<&str> = errors.lines().filter(|l| l.starts_with("error: repository ")).collect();
    assert_eq!(problem_lines.len(), 6, "one line per unrestorable snapshot:\n{errors}");
    for name in ["left", "right"] {
        assert_eq!(problem_lines.iter().filter(|l| l.contains(&format!("repository {name}:"))).count(), 3, "{errors}");
    }
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("6 snapshots of 2 repositories cannot be restored"),
        "stdout: {}\nstderr: {errors}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A NAME the store does not hold is the caller's mistake (exit 2, naming it), found before
/// anything is verified; it is not damage.
#[test]
fn a_name_not_in_the_store_is_a_usage_error_naming_it() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "f", "x\n", "c");
    env.backup("src", &repo);
    for args in [vec!["verify", "no-such-repo"], vec!["verify", "src", "no-such-repo", "--json"]] {
        let out = env.rv(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("no-such-repo"), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "nothing verified, no report: {}", String::from_utf8_lossy(&out.stdout));
    }
}

/// `scratch_dir` naming a directory that does not exist: `verify --deep` says so (exit 2,
/// naming it) instead of reporting the store damaged; a shallow verify needs no scratch.
#[test]
fn deep_verify_with_a_missing_scratch_directory_is_an_environment_error() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "f", "x\n", "c");
    env.backup("src", &repo);
    let missing = env.path("no-such-scratch");
    let config = env.path("repovault.toml");
    std::fs::write(&config, format!("scratch_dir = {:?}\n", missing.to_string_lossy())).unwrap();
    let config = config.to_string_lossy().into_owned();

    let out = env.rv(&["--config", &config, "verify", "--deep"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains(&*missing.to_string_lossy()), "names the directory: {}", stderr(&out));
    assert_eq!(code(&env.rv(&["--config", &config, "verify"])), 0);
}

/// The scratch directory (TMPDIR) is a 3 MiB tmpfs and the repository is 9 MB: the deep
/// check's rebuild runs out of space. That is the machine's problem, not the store's: exit
/// 2, naming the scratch directory, and the store still verifies.
#[test]
fn deep_verify_with_a_full_scratch_disk_is_an_environment_error() {
    let env = Env::new();
    env.init_store();
    let repo = big_repo(&env.path("big"), 9, 1_000_000);
    env.backup("big", &repo);
    let mount = env.path("small-tmp");
    std::fs::create_dir(&mount).unwrap();
    let script = r#"
        set -u
        mount -t tmpfs -o size=3m tmpfs "$MOUNT" || { echo "mount=failed"; exit 0; }
        echo "mount=0"
        TMPDIR="$MOUNT" "$RV" verify --store "$STORE" --deep >"$LOG.deep" 2>&1; echo "deep=$?"
        echo "left_in_scratch=$(find "$MOUNT" -mindepth 1 | wc -l)"
    "#;
    let log = env.path("log");
    let out = Command::new("unshare")
        .args(["--mount", "--map-root-user", "sh", "-c", script])
        .env("RV", env!("CARGO_BIN_EXE_repovault"))
        .env("MOUNT", &mount)
        .env("STORE", env.path("store"))
        .env("LOG", &log)
        .output()
        .expect("this test needs `unshare` (util-linux) to mount a small tmpfs");
    let step = |name: &str| script_step(&out, name);
    assert_ne!(step("mount"), "failed", "could not mount a tmpfs in a user namespace: {}", stderr(&out));
    let deep = std::fs::read_to_string(format!("{}.deep", log.display())).unwrap_or_default();
    assert_eq!(step("deep"), "2", "a full scratch disk is an environment error:\n{deep}");
    assert!(deep.contains(&*mount.to_string_lossy()), "names the scratch directory:\n{deep}");
    assert!(deep.contains("No space left on device"), "names the cause:\n{deep}");
    assert!(!deep.contains("DAMAGED") && !deep.contains("damaged"), "not reported as damage:\n{deep}");
    assert_eq!(step("left_in_scratch"), "0", "the scratch directory is cleaned up");
    assert_eq!(code(&env.rv(&["verify"])), 0, "the store is fine");
}

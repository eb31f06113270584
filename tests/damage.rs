//! Bad input and broken stores: each ends with a clear error, nothing half-written, and the
//! next run completing the work.

mod common;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::*;

fn loose_object_path(repo: &Path, id: &str) -> PathBuf {
    git_dir(repo).join("objects").join(&id[..2]).join(&id[2..])
}

fn zlib_compress(data: &[u8]) -> Vec<u8> {
    // `git hash-object` cannot write a wrong object, so build one by hand: zlib of a
    // header and content that do not match the name it is stored under.
    let mut child = Command::new("python3")
        .args(["-c", "import sys,zlib; sys.stdout.buffer.write(zlib.compress(sys.stdin.buffer.read()))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    out
}

#[test]
fn missing_source_object_fails_naming_it_and_records_nothing() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "keep", "keep\n", "one");
    commit_file(&repo, "lost", "this blob will vanish\n", "two");
    let blob = git(&repo, &["rev-parse", "HEAD:lost"]).trim().to_owned();
    std::fs::remove_file(loose_object_path(&repo, &blob)).unwrap();
    assert_backup_fails_naming(&env, &repo, &blob);
}

#[test]
fn corrupt_loose_object_fails_naming_it() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "a", "original content\n", "one");
    let blob = git(&repo, &["rev-parse", "HEAD:a"]).trim().to_owned();
    let path = loose_object_path(&repo, &blob);
    overwrite(&path, &zlib_compress(b"blob 17\0tampered content\n"));
    assert_backup_fails_naming(&env, &repo, &blob);
}

/// A `.promisor` marker beside a pack (left by a partial clone whose objects were all fetched
/// since) is not damage: a repository holding every object is backed up and restores.
#[test]
fn a_complete_repository_with_a_promisor_marker_is_backed_up() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "a", "one\n", "one");
    commit_file(&repo, "b", "two\n", "two");
    git(&repo, &["repack", "-a", "-d", "-q"]);
    mark_packs_promisor(&repo);
    env.backup("src", &repo);
    env.restore_matches("src", &env.path("restored"), &repo);
}

/// Missing objects are the damage, marker or not: the backup fails naming the object.
#[test]
fn a_promisor_marked_repository_missing_an_object_fails_naming_it() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "a", "one\n", "one");
    git(&repo, &["repack", "-a", "-d", "-q"]);
    mark_packs_promisor(&repo);
    commit_file(&repo, "lost", "this blob will vanish\n", "two");
    let blob = git(&repo, &["rev-parse", "HEAD:lost"]).trim().to_owned();
    std::fs::remove_file(loose_object_path(&repo, &blob)).unwrap();
    assert_backup_fails_naming(&env, &repo, &blob);
}

/// Puts an empty `.promisor` file beside each pack, as a partial clone's fetch does.
fn mark_packs_promisor(repo: &Path) {
    let pack_dir = repo.join(".git/objects/pack");
    let packs: Vec<_> = std::fs::read_dir(&pack_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    assert!(!packs.is_empty(), "no pack in {}", pack_dir.display());
    for pack in packs {
        std::fs::write(pack.with_extension("promisor"), "").unwrap();
    }
}

/// Replaces a file git made read-only.
fn overwrite(path: &Path, bytes: &[u8]) {
    let mut perms = path.metadata().unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(path, perms).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A backup of a damaged source fails, names the object, and records no snapshot.
fn assert_backup_fails_naming(env: &Env, repo: &Path, object: &str) {
    let out = env.rv(&["backup", &repo.to_string_lossy()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains(object), "error names the object: {}", stderr(&out));
    assert!(stderr(&out).contains("corrupt") || stderr(&out).contains("missing"), "{}", stderr(&out));
    assert_eq!(snapshot_count(&env.path("store")), 0);
}

/// A first snapshot of a source with a reachability bitmap is counted by `git rev-list`
/// (see `bitmap_count`); an object missing from it fails all the same, naming the object.
#[test]
fn missing_object_in_a_source_with_a_bitmap_fails_naming_it() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "keep", "keep\n", "one");
    git(&repo, &["repack", "-q", "-a", "-d", "--write-bitmap-index"]);
    commit_file(&repo, "lost", "this blob will vanish\n", "two");
    let blob = git(&repo, &["rev-parse", "HEAD:lost"]).trim().to_owned();
    std::fs::remove_file(loose_object_path(&repo, &blob)).unwrap();
    assert_backup_fails_naming(&env, &repo, &blob);
}

#[test]
fn corrupt_packed_object_fails_and_records_nothing() {
    corrupt_packed_object_case(&["gc", "-q"]);
}

#[test]
fn corrupt_packed_object_with_a_bitmap_fails_and_records_nothing() {
    corrupt_packed_object_case(&["repack", "-q", "-a", "-d", "--write-bitmap-index"]);
}

fn corrupt_packed_object_case(pack_with: &[&str]) {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "a", &"some long enough content to find in the pack\n".repeat(50), "one");
    git(&repo, pack_with);
    let blob = git(&repo, &["rev-parse", "HEAD:a"]).trim().to_owned();
    let pack = pack_file(&repo);
    // `git verify-pack -v` lists "id type size size-in-pack offset": flip a byte inside the blob's
    // compressed data, which a pack copy passes along without decoding.
    let listing = git(&repo, &["verify-pack", "-v", &pack.with_extension("idx").to_string_lossy()]);
    let line = listing.lines().find(|l| l.starts_with(&blob)).expect("blob is packed");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (in_pack, offset): (usize, usize) = (fields[3].parse().unwrap(), fields[4].parse().unwrap());
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[offset + in_pack / 2] ^= 0xff;
    overwrite(&pack, &bytes);
    assert_backup_fails_naming(&env, &repo, &blob);
}

fn backed_up_store(env: &Env) -> PathBuf {
    env.init_store();
    let repo = new_repo(&env.path("src"));
    for i in 0..3 {
        commit_file(&repo, "f", &format!("{i}\n"), &format!("c{i}"));
    }
    env.backup("src", &repo);
    repo
}

#[test]
fn flipped_byte_in_store_is_found_by_verify_and_refused_by_restore() {
    let env = Env::new();
    backed_up_store(&env);
    assert_eq!(code(&env.rv(&["verify"])), 0);
    let objects = store_objects(&env.path("store"));
    let victim = &objects[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(victim, bytes).unwrap();

    let out = env.rv(&["verify", "--json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    let problems = report["problems"].as_array().unwrap();
    assert!(problems.iter().any(|p| p["object"] == name.as_str()), "{report}");
    for field in ["repos_checked", "snapshots_checked", "objects_checked", "bytes_checked"] {
        assert!(report[field].is_u64(), "{field} in {report}");
    }

    let dest = env.path("out");
    let out = env.rv(&["restore", "src", &dest.to_string_lossy()]);
    assert_ne!(code(&out), 0);
    assert!(!dest.join("HEAD").exists(), "a failed restore leaves nothing that looks like a repository");
}

#[test]
fn deleted_store_file_is_found_by_verify() {
    let env = Env::new();
    backed_up_store(&env);
    let objects = store_objects(&env.path("store"));
    std::fs::remove_file(&objects[objects.len() - 1]).unwrap();
    let out = env.rv(&["verify", "src"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("missing"), "{}", stderr(&out));
}

#[test]
fn deep_verify_rebuilds_and_checks_connectivity() {
    let env = Env::new();
    backed_up_store(&env);
    let out = env.rv(&["verify", "--deep", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["repos_checked"], 1);
}

#[test]
fn backup_killed_midway_is_completed_by_the_next_run() {
    let env = Env::new();
    env.init_store();
    // Enough incompressible data for several chunks, so the kill lands mid-stream.
    let repo = big_repo(&env.path("big"), 6, 3_000_000);

    let store = env.path("store");
    let mut child = env
        .rv_command(&["backup", &repo.to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a good part of the pack is stored, so that a re-run that stored it all
    // again would show.
    wait_for_stored_bytes(&store, 6_000_000);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!store_objects(&store).is_empty(), "the backup had started storing");
    assert_eq!(snapshot_count(&store), 0, "killed before any snapshot was committed");

    env.backup("big", &repo);
    assert_eq!(code(&env.rv(&["verify"])), 0);
    // What the killed run stored is reused, not stored a second time.
    let listed: serde_json::Value = serde_json::from_str(&env.rv_ok(&["snapshots", "big", "--json"])).unwrap();
    let pack_bytes = listed[0]["pack_bytes"].as_u64().unwrap();
    let stored = stored_bytes(&store);
    assert!(stored < pack_bytes + pack_bytes / 5, "stored {stored} bytes for a {pack_bytes}-byte pack");
    env.restore_matches("big", &env.path("out"), &repo);
}

#[test]
fn damaged_snapshot_manifest_is_reported_by_verify() {
    let env = Env::new();
    backed_up_store(&env);
    let manifest = files_under(&env.path("store/snapshots")).pop().unwrap();
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replacen("refs/heads/main", "refs/heads/mainx", 1)).unwrap();
    let out = env.rv(&["verify", "--json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert!(problems.iter().any(|p| p["problem"].as_str().unwrap().contains("damaged")), "{report}");
}

/// Three snapshots chained oldest to newest in a format 2 store (where a snapshot needs its
/// parent); returns their ids and manifest files.
fn chained_snapshots(env: &Env) -> Vec<(String, PathBuf)> {
    env.init_store_format(2);
    let repo = new_repo(&env.path("src"));
    let ids: Vec<String> = (0..3)
        .map(|i| {
            commit_file(&repo, "f", &format!("{i}\n"), &format!("c{i}"));
            env.backup("src", &repo)
        })
        .collect();
    let files = files_under(&env.path("store/snapshots"));
    ids.into_iter()
        .map(|id| {
            let file = files.iter().find(|f| f.to_string_lossy().ends_with(&id)).unwrap().clone();
            (id, file)
        })
        .collect()
}

/// The report's problems about `snapshot`.
fn problems_of<'a>(report: &'a serde_json::Value, snapshot: &str) -> Vec<&'a str> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["snapshot"] == snapshot)
        .map(|p| p["problem"].as_str().unwrap())
        .collect()
}

/// A damaged manifest makes every later snapshot chained to it unrestorable: each is
/// listed, saying why.
#[test]
fn damaged_manifest_lists_every_later_snapshot_chained_to_it() {
    let env = Env::new();
    let chain = chained_snapshots(&env);
    let (first, file) = &chain[0];
    let text = std::fs::read_to_string(file).unwrap();
    std::fs::write(file, text.replacen("refs/heads/main", "refs/heads/mainx", 1)).unwrap();
    let out = env.rv(&["verify", "--json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(problems_of(&report, first).iter().any(|p| p.contains("damaged")), "{report:#}");
    for (later, _) in &chain[1..] {
        let problems = problems_of(&report, later);
        assert!(
            problems.iter().any(|p| p.contains("cannot be restored") && p.contains(&first[..12])),
            "{later} depends on {first}: {report:#}"
        );
    }
    assert_eq!(report["unrestorable"].as_array().unwrap().len(), 3, "{report:#}");
}

/// A snapshot whose parent is gone breaks the chain for it and for every snapshot after it.
#[test]
fn missing_parent_lists_every_later_snapshot_chained_through_it() {
    let env = Env::new();
    let chain = chained_snapshots(&env);
    std::fs::remove_file(&chain[0].1).unwrap();
    let out = env.rv(&["verify", "--json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (second, third) = (&chain[1].0, &chain[2].0);
    assert!(problems_of(&report, second).iter().any(|p| p.contains("is missing")), "{report:#}");
    assert!(
        problems_of(&report, third).iter().any(|p| p.contains("cannot be restored") && p.contains(&second[..12])),
        "{report:#}"
    );
    let dest = env.path("out");
    let out = env.rv(&["restore", "src", &dest.to_string_lossy(), "--at", third]);
    assert_ne!(code(&out), 0, "the listed snapshot indeed does not restore");
}

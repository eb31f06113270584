//! The store failing under a backup: a full disk, and a store that vanishes mid-run (an NFS
//! mount going away). Each must end with a clear error, nothing committed that is not
//! complete, nothing written where the store used to be, and the next run completing.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// The store lives on a 3 MiB tmpfs (mounted in a private mount namespace by `unshare`, so
/// the test needs no privileges beyond user namespaces): the first backup of a 9 MB
/// repository runs out of space, fails naming the cause, and commits nothing; the store
/// stays consistent. Once the operator makes room, the next backup completes and restores.
#[test]
fn full_disk_fails_cleanly_and_the_next_run_completes() {
    let env = Env::new();
    let repo = big_repo(&env.path("big"), 9, 1_000_000);
    let mount = env.path("small-disk");
    std::fs::create_dir(&mount).unwrap();
    let dest = env.path("restored");
    // One shell in one mount namespace: the tmpfs and what is on it end with it. Each
    // step's exit status is printed as `step=N`; repovault's output goes to the log.
    let script = r#"
        set -u
        rv="$RV"
        store="$MOUNT/store"
        mount -t tmpfs -o size=3m tmpfs "$MOUNT" || { echo "mount=failed"; exit 0; }
        echo "mount=0"
        "$rv" init --store "$store" >/dev/null; echo "init=$?"
        head -c 8m /dev/zero >"$MOUNT/filler" 2>/dev/null; echo "filled=$?"
        "$rv" backup --store "$store" --name big "$REPO" >"$LOG.brim" 2>&1; echo "brim=$?"
        echo "sessions_after_brim=$(find "$store/sessions" -mindepth 1 2>/dev/null | wc -l)"
        rm "$MOUNT/filler"
        "$rv" backup --store "$store" --name big "$REPO" >"$LOG.first" 2>&1; echo "first=$?"
        echo "snapshots_after_first=$(find "$store/snapshots" -type f | wc -l)"
        echo "temp_files_after_first=$(find "$store" -name '.tmp*' | wc -l)"
        "$rv" verify --store "$store" >"$LOG.verify1" 2>&1; echo "verify1=$?"
        mount -o remount,size=64m "$MOUNT"; echo "remount=$?"
        "$rv" backup --store "$store" --name big "$REPO" >"$LOG.second" 2>&1; echo "second=$?"
        "$rv" verify --store "$store" >"$LOG.verify2" 2>&1; echo "verify2=$?"
        "$rv" restore --store "$store" big "$DEST" >"$LOG.restore" 2>&1; echo "restore=$?"
    "#;
    let log = env.path("log");
    let out = Command::new("unshare")
        .args(["--mount", "--map-root-user", "sh", "-c", script])
        .env("RV", env!("CARGO_BIN_EXE_repovault"))
        .env("MOUNT", &mount)
        .env("REPO", &repo)
        .env("DEST", &dest)
        .env("LOG", &log)
        .env("TMPDIR", env.dir.path())
        .output()
        .expect("this test needs `unshare` (util-linux) to mount a small tmpfs");
    let read_log = |suffix: &str| std::fs::read_to_string(format!("{}.{suffix}", log.display())).unwrap_or_default();
    let step = |name: &str| script_step(&out, name);
    assert_ne!(step("mount"), "failed", "could not mount a tmpfs in a user namespace: {}", stderr(&out));
    assert_eq!(step("init"), "0");

    // A disk full to the last byte fails the backup as it registers its session: it leaves
    // no session directory behind (prune would wait an hour on one before revoking it).
    assert_eq!(step("filled"), "1", "the filler fills the disk");
    assert_eq!(step("brim"), "1", "a backup into a brim-full store fails with exit 1:\n{}", read_log("brim"));
    assert!(read_log("brim").contains("No space left on device"), "{}", read_log("brim"));
    assert_eq!(step("sessions_after_brim"), "0", "no session is left behind:\n{}", read_log("brim"));

    assert_eq!(step("first"), "1", "a backup into a full store fails with exit 1:\n{}", read_log("first"));
    let first = read_log("first");
    assert!(first.contains("No space left on device"), "the error names the cause:\n{first}");
    assert!(!first.contains("panicked"), "{first}");
    assert_eq!(step("snapshots_after_first"), "0", "nothing is committed");
    assert_eq!(step("temp_files_after_first"), "0", "no temporary file is left behind");
    assert_eq!(step("verify1"), "0", "the store is consistent after the failure:\n{}", read_log("verify1"));

    assert_eq!(step("remount"), "0");
    assert_eq!(step("second"), "0", "with room, the next backup completes:\n{}", read_log("second"));
    assert_eq!(step("verify2"), "0", "{}", read_log("verify2"));
    assert_eq!(step("restore"), "0", "{}", read_log("restore"));
    fsck(&dest);
    assert_eq!(ref_state(&dest), ref_state(&repo));
}

/// A slow (rate-limited) nightly run loses its store mid-backup, as when an NFS mount goes
/// away: the run fails naming the store, writes nothing where the store was (no directory
/// is re-created there), and once the store is back the next run completes the work.
#[test]
fn store_vanishing_mid_run_fails_cleanly_and_the_next_run_completes() {
    let env = Env::new();
    env.init_store();
    let forge = env.path("forge");
    std::fs::create_dir(&forge).unwrap();
    let repo = big_repo(&forge.join("big"), 9, 1_000_000);
    let store = env.path("store");
    let away = env.path("store-away");

    let child = env
        .rv_command(&["run", "--scan", &forge.to_string_lossy(), "--rate-limit", "1MiB"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for_stored_bytes(&store, 2_000_000), "the run was storing when the store went away");
    std::fs::rename(&store, &away).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_ne!(code(&out), 0, "a run that lost its store does not report success:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(&env.store()), "the error names the store:\n{err}");
    assert!(!store.exists(), "nothing was written where the store used to be");

    std::fs::rename(&away, &store).unwrap();
    assert_eq!(snapshot_count(&store), 0, "the interrupted backup committed nothing");
    assert_eq!(code(&env.rv(&["verify"])), 0, "the store is consistent");
    let again = env.rv(&["run", "--scan", &forge.to_string_lossy()]);
    assert_eq!(code(&again), 0, "the next run completes:\n{}", stderr(&again));
    assert_eq!(snapshot_count(&store), 1);
    assert_eq!(code(&env.rv(&["verify"])), 0);
    env.restore_matches("big", &env.path("restored"), &repo);
}

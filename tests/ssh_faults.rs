//! An ssh:// store whose storage host runs out of disk (issue 10): the backup or the nightly
//! run fails with an error that says the storage host's disk is full, commits nothing, leaves
//! no temporary file and a store that verifies; once the operator makes room, the next one
//! completes and restores.
//!
//! The storage host's disk is a 16 MiB tmpfs that only sshd's mount namespace sees
//! (`Sshd::start_with_tmpfs`): the test fills it and inspects it through ssh, as an operator
//! would, since it is invisible here.

mod common;

use std::path::{Path, PathBuf};

use common::{sshd::Sshd, *};

/// The storage host with its small disk, and an env whose store is on it.
struct FullHost {
    env: Env,
    sshd: Sshd,
    /// The store's path on the storage host (on the tmpfs).
    store: PathBuf,
    filler: PathBuf,
}

impl FullHost {
    /// A store on a 16 MiB disk with 3 MiB left: a 9 MB repository does not fit.
    fn start() -> FullHost {
        let mut env = Env::new();
        let sshd = Sshd::start_with_tmpfs(&env.path("sshd"), &env.path("disk"), "16m");
        let disk = sshd.tmpfs_mount_point().unwrap().to_owned();
        let store = disk.join("store");
        env.use_ssh_at(&sshd, &store);
        env.init_store();
        let filler = disk.join("filler");
        sshd.run_ok(&format!("head -c 13M /dev/zero > {}", filler.display()));
        let free = sshd.run_ok(&format!("df -B1 --output=avail {} | tail -n 1", disk.display()));
        let free: u64 = free.trim().parse().unwrap();
        assert!(free < 3_200_000, "the storage host's disk has {free} bytes free");
        FullHost { env, sshd, store, filler }
    }

    /// Unfinished writes anywhere in the store, as the storage host's `find` sees them.
    fn temp_files(&self) -> String {
        self.sshd.run_ok(&format!("find {} -name '.tmp*'", self.store.display()))
    }

    /// What `snapshots --json` lists, read over ssh.
    fn snapshot_count(&self) -> usize {
        let out = self.env.rv_ok(&["snapshots", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&out).expect("snapshots --json");
        list.as_array().expect("an array").len()
    }

    /// The state a failed write must leave: nothing committed, no temporary file, a store
    /// that verifies.
    fn assert_nothing_committed_and_consistent(&self) {
        assert_eq!(self.snapshot_count(), 0, "a backup that ran out of disk committed a snapshot");
        assert_eq!(self.temp_files(), "", "a temporary file was left on the storage host");
        let verify = self.env.rv(&["verify"]);
        assert_eq!(code(&verify), 0, "the store is consistent after the failure: {}", stderr(&verify));
    }

    /// The operator's fix: room made on the storage host.
    fn make_room(&self) {
        self.sshd.run_ok(&format!("rm {}", self.filler.display()));
    }

    /// After the next backup: verified deeply, and restored exactly.
    fn assert_restores(&self, name: &str, repo: &Path) {
        let verify = self.env.rv(&["verify", "--deep"]);
        assert_eq!(code(&verify), 0, "verify --deep over ssh: {}", stderr(&verify));
        assert_eq!(self.snapshot_count(), 1);
        self.env.restore_matches(name, &self.env.path("restored"), repo);
    }
}

/// The error an operator reads: the cause, on the storage host, and which store and file.
fn assert_names_the_full_storage_host(err: &str, store: &str) {
    assert!(
        err.contains("No space left on device (os error 28) on the storage host"),
        "the error names the cause, and whose disk is full:\n{err}"
    );
    assert!(err.contains(store), "the error names the store:\n{err}");
    assert!(err.contains("objects/"), "the error names the file being written:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_full_storage_host_fails_the_backup_cleanly_and_the_next_backup_completes() {
    let host = FullHost::start();
    let repo = big_repo(&host.env.path("big"), 9, 1_000_000);
    let repo_arg = repo.to_string_lossy().into_owned();

    let out = host.env.rv(&["backup", "--name", "big", &repo_arg]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "a backup into a full store fails with exit 1:\n{err}");
    assert!(out.stdout.is_empty(), "no snapshot id is printed: {:?}", String::from_utf8_lossy(&out.stdout));
    assert_names_the_full_storage_host(&err, &host.env.store_address());
    host.assert_nothing_committed_and_consistent();

    host.make_room();
    let id = host.env.backup("big", &repo);
    assert_eq!(id.len(), 64);
    host.assert_restores("big", &repo);
}

#[test]
fn a_full_storage_host_fails_the_nightly_run_cleanly_and_the_next_run_completes() {
    let host = FullHost::start();
    let forge = host.env.path("forge");
    let repo = big_repo(&forge.join("team/big.git"), 9, 1_000_000);
    let scan = forge.to_string_lossy().into_owned();

    let out = host.env.rv(&["run", "--scan", &scan, "--json"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "a run whose repository did not fit fails with exit 1:\n{err}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("run --json");
    assert_eq!((summary["backed_up"].as_u64(), summary["failed"].as_u64()), (Some(0), Some(1)), "{summary}");
    let failure = &summary["failed_repos"][0];
    assert_eq!(failure["repo"], "team/big.git", "{summary}");
    assert_names_the_full_storage_host(failure["error"].as_str().unwrap(), &host.env.store_address());
    assert!(err.contains("team/big.git") && err.contains("No space left on device"), "{err}");
    assert!(!err.contains("retrying"), "a full disk is not retried as a transient error:\n{err}");
    host.assert_nothing_committed_and_consistent();

    host.make_room();
    let again = host.env.rv(&["run", "--scan", &scan, "--json"]);
    assert_eq!(code(&again), 0, "with room, the next run completes: {}", stderr(&again));
    let summary: serde_json::Value = serde_json::from_slice(&again.stdout).expect("run --json");
    assert_eq!((summary["backed_up"].as_u64(), summary["failed"].as_u64()), (Some(1), Some(0)), "{summary}");
    host.assert_restores("team/big.git", &repo);
}

//! Helpers shared by the integration tests: real git repositories made with the git CLI
//! (the independent oracle), and the real `repovault` binary.
#![allow(dead_code)]

pub mod hg;
pub mod pg;
pub mod sshd;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

pub struct Env {
    pub dir: tempfile::TempDir,
    /// Set by `use_ssh`: the store's ssh:// URL and the ssh command that reaches it.
    ssh: Option<(String, String)>,
}

impl Env {
    pub fn new() -> Env {
        Env { dir: tempfile::tempdir().expect("tempdir"), ssh: None }
    }

    /// From now on repovault reaches this env's store through `sshd`, as
    /// `ssh://backup-host/<store path>` with REPOVAULT_RSH set to `sshd.rsh()`: every helper
    /// (init_store, backup, restore_matches...) then works over SSH, while the tests' own
    /// checks still read the store's files at `path("store")` (the same machine).
    pub fn use_ssh(&mut self, sshd: &sshd::Sshd) {
        self.use_ssh_at(sshd, &self.path("store"));
    }

    /// As `use_ssh`, for a store at `store` on the storage host: one only its commands see,
    /// such as one on `Sshd::start_with_tmpfs`'s disk (`path("store")` is then not it).
    pub fn use_ssh_at(&mut self, sshd: &sshd::Sshd, store: &Path) {
        self.ssh = Some((sshd.url(store), sshd.rsh()));
    }

    /// What repovault is given as the store: the local path, or its ssh:// URL after `use_ssh`.
    pub fn store_address(&self) -> String {
        match &self.ssh {
            Some((url, _)) => url.clone(),
            None => self.store(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn store(&self) -> String {
        self.path("store").to_string_lossy().into_owned()
    }

    /// repovault with `--store` set to this env's store (`store_address`) via the environment,
    /// ready to run or spawn.
    pub fn rv_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_repovault"));
        command
            .args(args)
            .env("REPOVAULT_STORE", self.store_address())
            .env("TMPDIR", self.dir.path())
            // What a command caches of an ssh:// store stays with the test.
            .env("XDG_CACHE_HOME", self.path("cache"))
            .current_dir(self.dir.path());
        if let Some((_, rsh)) = &self.ssh {
            command.env("REPOVAULT_RSH", rsh);
        }
        command
    }

    /// Runs repovault with `--store` set to this env's store via the environment.
    pub fn rv(&self, args: &[&str]) -> Output {
        self.rv_command(args).output().expect("run repovault")
    }

    /// Runs repovault and asserts it exited 0; returns stdout.
    pub fn rv_ok(&self, args: &[&str]) -> String {
        let out = self.rv(args);
        assert!(out.status.success(), "repovault {args:?} failed: {}\n{}", out.status, stderr(&out));
        String::from_utf8(out.stdout).expect("utf8 stdout")
    }

    pub fn init_store(&self) {
        self.rv_ok(&["init"]);
    }

    /// A store in an earlier format, as an earlier repovault made it: the layout is the
    /// same, only the version in its config differs.
    pub fn init_store_format(&self, format: u32) {
        self.init_store();
        let config_path = self.path("store/config");
        let current = format!("\"format\": {}", repovault::store::FORMAT_VERSION);
        let config = std::fs::read_to_string(&config_path).unwrap();
        assert!(config.contains(&current), "{config}");
        std::fs::write(&config_path, config.replace(&current, &format!("\"format\": {format}"))).unwrap();
    }

    /// Backs up and returns the new snapshot id.
    pub fn backup(&self, name: &str, repo: &Path) -> String {
        let out = self.rv_ok(&["backup", "--name", name, &repo.to_string_lossy()]);
        let id = out.trim().to_owned();
        assert_eq!(id.len(), 64, "snapshot id on stdout: {out:?}");
        id
    }

    /// Restores the latest snapshot of `name` into `dest` and asserts that it has exactly
    /// `source`'s refs and HEAD and passes `git fsck --full`.
    pub fn restore_matches(&self, name: &str, dest: &Path, source: &Path) {
        self.restore(name, dest, None);
        assert_eq!(ref_state(dest), ref_state(source));
        fsck(dest);
    }

    pub fn restore(&self, name: &str, dest: &Path, at: Option<&str>) {
        let dest = dest.to_string_lossy().into_owned();
        let mut args = vec!["restore", name, &dest];
        if let Some(at) = at {
            args.extend(["--at", at]);
        }
        self.rv_ok(&args);
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

/// Runs git in `dir` with a fixed identity and dates, asserting success; returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?} in {} failed: {}", dir.display(), stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new non-bare repository with branch `main` at `path`.
pub fn new_repo(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    git(path, &["init", "-q", "-b", "main"]);
    path.to_owned()
}

/// Writes `content` to `file` and commits it; returns the commit id.
pub fn commit_file(repo: &Path, file: &str, content: &str, message: &str) -> String {
    let path = repo.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"]).trim().to_owned()
}

/// Writes `content` to `file` and amends it into the last commit (or makes the first), then prunes what that
/// left unreachable: the source stays about the same size while the store's chain keeps
/// every earlier version, so a full snapshot soon comes due (and a prune then has the old
/// chain to delete). A repository that only grows is never full again (its chain holds
/// what it holds).
pub fn rewrite_last_commit(repo: &Path, file: &str, content: &str) {
    std::fs::write(repo.join(file), content).unwrap();
    git(repo, &["add", "-A"]);
    let has_commit =
        Command::new("git").arg("-C").arg(repo).args(["rev-parse", "-q", "--verify", "HEAD"]).output().unwrap();
    let amend: &[&str] = if has_commit.status.success() { &["--amend"] } else { &[] };
    git(repo, &[&["commit", "-q", "-m", "rewritten"], amend].concat());
    git(repo, &["reflog", "expire", "--expire=now", "--all"]);
    git(repo, &["prune", "--expire=now"]);
}

/// What a restore must reproduce: every ref with its object and type, and HEAD.
pub fn ref_state(repo: &Path) -> String {
    let refs = git(repo, &["for-each-ref", "--format=%(objectname) %(objecttype) %(refname) %(symref)"]);
    let head = git(repo, &["symbolic-ref", "-q", "HEAD"]);
    format!("{refs}HEAD -> {head}")
}

/// `ref_state`, but HEAD may be detached.
pub fn ref_state_any_head(repo: &Path) -> String {
    let refs = git(repo, &["for-each-ref", "--format=%(objectname) %(objecttype) %(refname) %(symref)"]);
    let head = std::fs::read_to_string(git_dir(repo).join("HEAD")).unwrap();
    format!("{refs}HEAD -> {head}")
}

pub fn git_dir(repo: &Path) -> PathBuf {
    if repo.join(".git").is_dir() { repo.join(".git") } else { repo.to_owned() }
}

/// Asserts `git fsck --full` finds nothing wrong (dangling objects are not errors).
/// The longest delta chain in `repo`'s packs, as `git verify-pack -v` reports it.
pub fn max_delta_chain(repo: &Path) -> u64 {
    let mut longest = 0;
    for entry in std::fs::read_dir(repo.join("objects/pack")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|x| x == "idx") {
            let report = git(repo, &["verify-pack", "-v", &entry.path().to_string_lossy()]);
            for line in report.lines().filter_map(|l| l.strip_prefix("chain length = ")) {
                longest = longest.max(line.split(':').next().unwrap().parse().unwrap());
            }
        }
    }
    longest
}

pub fn fsck(repo: &Path) {
    let out =
        Command::new("git").args(["fsck", "--full", "--strict", "--no-dangling"]).current_dir(repo).output().unwrap();
    assert!(
        out.status.success(),
        "git fsck failed in {}: {}{}",
        repo.display(),
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Files below `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out.sort();
    out
}

/// Object files of the store (chunks and indexes), excluding temporaries.
pub fn store_objects(store: &Path) -> Vec<PathBuf> {
    files_under(&store.join("objects"))
        .into_iter()
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}

/// Bytes of the store's object files so far.
pub fn stored_bytes(store: &Path) -> u64 {
    store_objects(store).iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum()
}

/// Waits (at most a minute) until a running backup has stored `at_least` bytes; returns
/// whether it did.
pub fn wait_for_stored_bytes(store: &Path, at_least: u64) -> bool {
    let start = std::time::Instant::now();
    while stored_bytes(store) < at_least {
        if start.elapsed() > std::time::Duration::from_secs(60) {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    true
}

/// A repository at `path` holding `files` files of `bytes_each` incompressible bytes in one
/// commit: enough data for a backup that takes a while and spans several chunks.
pub fn big_repo(path: &Path, files: u64, bytes_each: usize) -> PathBuf {
    let repo = new_repo(path);
    for i in 0..files {
        std::fs::write(repo.join(format!("blob{i}")), noise_bytes(i, bytes_each)).unwrap();
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "big"]);
    repo
}

/// The repository's one pack file (after a repack).
pub fn pack_file(repo: &Path) -> PathBuf {
    files_under(&git_dir(repo).join("objects/pack"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .expect("the repository has a pack")
}

pub fn snapshot_count(store: &Path) -> usize {
    files_under(&store.join("snapshots")).len()
}

/// Incompressible bytes, different for every seed (xorshift).
pub fn noise_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Incompressible text, different for every seed.
pub fn noise_text(seed: u64, len: usize) -> String {
    noise_bytes(seed, len).into_iter().map(|b| char::from(b'a' + b % 26)).collect()
}

/// The value a test's shell script reported as a `NAME=value` line on stdout (the scripts run
/// under `unshare` print one such line per step, since the mount they use is gone after).
pub fn script_step(out: &Output, name: &str) -> String {
    let steps = String::from_utf8_lossy(&out.stdout);
    steps
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in the script's output:\n{steps}\n{}", stderr(out)))
        .to_owned()
}

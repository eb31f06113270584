//! ssh:// stores through a real sshd (tests/common/sshd.rs), and `repovault serve --stdio`
//! spoken to directly through a pipe.

mod common;

use common::{
    Env, code, commit_file, files_under, new_repo, ref_state,
    sshd::{Sshd, exit_within},
    stderr,
};
use repovault::store::{
    Access, Store, hash_hex,
    protocol::{self, MAGIC, PROTOCOL_VERSION, Request, Response},
};
use std::{
    io::Write,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

/// A test's own sshd, and an initialized store behind it that the test's commands reach.
fn ssh_env() -> (Env, Sshd) {
    let mut env = Env::new();
    let sshd = Sshd::start(&env.path("sshd"));
    env.use_ssh(&sshd);
    env.init_store();
    (env, sshd)
}

/// The store opened in the test's own process, as commands open it (`request_timeout`:
/// `ssh_timeout`, `None` for the default).
fn open_over_ssh(env: &Env, sshd: &Sshd, request_timeout: Option<Duration>) -> Store {
    let access = Access { ssh_command: Some(sshd.rsh()), request_timeout, ..Access::default() };
    Store::open_with(&env.store_address(), &access).unwrap()
}

/// The names of the store's object files: what backups wrote.
fn object_names(store: &Path) -> Vec<String> {
    let mut names: Vec<String> = files_under(&store.join("objects"))
        .into_iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn snapshot_ids(env: &Env, name: &str) -> Vec<String> {
    let out = env.rv_ok(&["snapshots", name, "--json"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("snapshots --json");
    list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn init_backup_restore_verify_snapshots_prune_over_ssh_equal_local() {
    let mut remote = Env::new();
    let sshd = Sshd::start(&remote.path("sshd"));
    remote.use_ssh(&sshd);
    let local = Env::new();
    let repo = new_repo(&local.path("src"));
    commit_file(&repo, "a.txt", &"first version\n".repeat(200), "one");

    remote.init_store();
    local.init_store();
    assert!(remote.path("store/config").is_file(), "init over ssh made no store at the remote path");
    assert!(remote.rv_ok(&["init"]).is_empty(), "a second init over ssh is a no-op");

    let first = remote.backup("app", &repo);
    local.backup("app", &repo);
    commit_file(&repo, "b.txt", &"second file\n".repeat(300), "two");
    let second = remote.backup("app", &repo);
    local.backup("app", &repo);

    // The same data in both stores, object for object.
    assert_eq!(object_names(&remote.path("store")), object_names(&local.path("store")));
    assert_eq!(snapshot_ids(&remote, "app"), vec![first.clone(), second.clone()]);

    remote.restore_matches("app", &remote.path("restored"), &repo);
    let old = remote.path("restored-old");
    remote.restore("app", &old, Some(&first));
    assert_eq!(common::git(&old, &["ls-tree", "--name-only", "HEAD"]).trim(), "a.txt");

    let verify = remote.rv(&["verify", "--deep"]);
    assert_eq!(code(&verify), 0, "verify --deep over ssh: {}", stderr(&verify));

    let pruned = remote.rv_ok(&["prune", "--keep-last", "1"]);
    local.rv_ok(&["prune", "--keep-last", "1"]);
    assert!(pruned.contains("forgot 1 snapshot"), "{pruned}");
    assert_eq!(snapshot_ids(&remote, "app"), vec![second]);
    assert_eq!(object_names(&remote.path("store")), object_names(&local.path("store")));
    let again = remote.path("restored-after-prune");
    remote.restore_matches("app", &again, &repo);
    assert_eq!(ref_state(&again), ref_state(&repo));
    assert_eq!(code(&remote.rv(&["verify", "--deep"])), 0);
    // Nothing left running on the storage host once the commands are done.
    assert!(exit_within(&sshd.serve_processes(), Duration::from_secs(10)), "a serve outlived its client");
}

#[test]
fn a_changed_host_key_refuses_the_store_with_ssh_saying_why() {
    let mut env = Env::new();
    let mut sshd = Sshd::start(&env.path("sshd"));
    env.use_ssh(&sshd);
    env.init_store();
    sshd.change_host_key();
    let out = env.rv(&["snapshots"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&env.store_address()), "the error names the store: {err}");
    assert!(err.to_lowercase().contains("host key"), "ssh's own reason is shown: {err}");
}

#[test]
fn a_protocol_mismatch_names_both_versions() {
    let (env, sshd) = ssh_env();

    // A remote repovault of another protocol version: it answers the hello as every
    // version must, with its own number.
    let hello = Response::Hello { magic: MAGIC.into(), protocol: PROTOCOL_VERSION + 7, version: "9.9.9".into() };
    let mut frame = Vec::new();
    protocol::write_frame(&mut frame, &hello, &[]).unwrap();
    std::fs::write(env.path("future-hello"), &frame).unwrap();
    sshd.install_remote_command(
        "repovault",
        &format!("#!/bin/sh\ncat {}\ncat >/dev/null\n", env.path("future-hello").display()),
    );
    let out = env.rv(&["snapshots"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("protocol mismatch"), "{err}");
    assert!(err.contains(&format!("speaks protocol {PROTOCOL_VERSION}")), "{err}");
    assert!(err.contains(&format!("speaks protocol {}", PROTOCOL_VERSION + 7)) && err.contains("9.9.9"), "{err}");

    // And the other way round: a serve meeting a client of another version says so too.
    let mut serve = Serve::start(&env.path("store"));
    let ours = serve.hello(PROTOCOL_VERSION + 7);
    assert!(matches!(ours, Response::Hello { protocol, .. } if protocol == PROTOCOL_VERSION));
    let out = serve.finish();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("protocol mismatch") && err.contains(&format!("speaks protocol {}", PROTOCOL_VERSION + 7)));
}

/// `repovault serve --stdio` spoken to through a pipe, as ssh would connect it.
struct Serve {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
}

impl Serve {
    fn start(store: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_repovault"))
            .args(["serve", "--stdio", "--store"])
            .arg(store)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        Serve { child, stdin, stdout }
    }

    fn send(&mut self, request: &Request, payload: &[u8]) -> (Response, Vec<u8>) {
        let stdin = self.stdin.as_mut().unwrap();
        protocol::write_frame(stdin, request, payload).unwrap();
        stdin.flush().unwrap();
        protocol::read_frame(&mut self.stdout).unwrap().expect("an answer")
    }

    fn hello(&mut self, version: u32) -> Response {
        let hello = Request::Hello { magic: MAGIC.into(), protocol: version, version: "test".into() };
        self.send(&hello, &[]).0
    }

    /// Closes stdin (the client goes away) and waits for the serve to exit.
    fn finish(mut self) -> std::process::Output {
        self.stdin = None;
        self.child.wait_with_output().unwrap()
    }
}

fn error_message(answer: Response) -> String {
    match answer {
        Response::Error(e) => e.message,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[test]
fn serve_answers_pipelined_requests_in_the_order_they_came() {
    let env = Env::new();
    env.init_store();
    let mut serve = Serve::start(&env.path("store"));
    serve.hello(PROTOCOL_VERSION);
    // Slow requests (objects of 4 MiB, each written, hashed and fsynced) sent together with
    // quick ones (reads of the config): serve carries out several at once, so the quick
    // ones finish first, and must still be answered in the order they were sent.
    let objects: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 4 << 20]).collect();
    let stdin = serve.stdin.as_mut().unwrap();
    let mut expected = Vec::new();
    for data in &objects {
        let id = hash_hex(data);
        let raw = [&[0u8][..], data].concat();
        protocol::write_frame(stdin, &Request::WriteNew { path: format!("objects/{}/{id}", &id[..2]) }, &raw).unwrap();
        expected.push(Response::Bool { value: true });
        protocol::write_frame(stdin, &Request::Read { path: "config".into() }, &[]).unwrap();
        expected.push(Response::Data);
    }
    stdin.flush().unwrap();
    let answers: Vec<Response> =
        (0..expected.len()).map(|_| protocol::read_frame(&mut serve.stdout).unwrap().expect("an answer").0).collect();
    assert_eq!(answers, expected);
    assert_eq!(object_names(&env.path("store")).len(), objects.len());
    assert!(serve.finish().status.success());
}

#[test]
fn serve_refuses_paths_outside_the_store() {
    let env = Env::new();
    env.init_store();
    std::fs::write(env.path("secret"), "outside the store").unwrap();
    let mut serve = Serve::start(&env.path("store"));
    serve.hello(PROTOCOL_VERSION);
    let outside = env.path("secret").to_string_lossy().into_owned();
    for path in [outside.as_str(), "../secret", "objects/../../secret", "objects//../secret", "secret"] {
        let (answer, data) = serve.send(&Request::Read { path: path.into() }, &[]);
        assert!(data.is_empty());
        assert!(error_message(answer).contains("not a path inside the store"), "{path}");
    }
    let (answer, _) = serve.send(&Request::WriteNew { path: "../planted".into() }, b"x");
    assert!(error_message(answer).contains("not a path inside the store"));
    let (answer, _) = serve.send(&Request::Rename { from: "config".into(), to: "../stolen".into() }, &[]);
    assert!(error_message(answer).contains("not a path inside the store"));
    assert!(!env.path("planted").exists() && !env.path("stolen").exists());
    assert!(env.path("store/config").exists());
    // Refusals are answers, not the end of the connection; and each one is logged.
    let (answer, config) = serve.send(&Request::Read { path: "config".into() }, &[]);
    assert_eq!(answer, Response::Data);
    assert!(String::from_utf8_lossy(&config).contains("repovault-store"));
    let out = serve.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).matches("not a path inside the store").count() >= 7, "{}", stderr(&out));
}

#[test]
fn serve_refuses_an_object_whose_payload_does_not_hash_to_its_name() {
    let env = Env::new();
    env.init_store();
    let mut serve = Serve::start(&env.path("store"));
    serve.hello(PROTOCOL_VERSION);
    let data = b"some chunk of a pack".repeat(100);
    let id = hash_hex(&data);
    let path = format!("objects/{}/{id}", &id[..2]);
    // The raw encoding: one byte 0, then the data (docs/FORMAT.md, "Objects").
    let mut payload = vec![0u8];
    payload.extend_from_slice(&data);
    let mut damaged = payload.clone();
    damaged[500] ^= 0x20;

    let (answer, _) = serve.send(&Request::WriteNew { path: path.clone() }, &damaged);
    assert!(error_message(answer).contains("not to its name"));
    let object = env.path("store").join(&path);
    assert!(!object.exists(), "a damaged transfer became an object");
    assert!(files_under(&env.path("store/objects")).is_empty(), "something was left behind");

    let (answer, _) = serve.send(&Request::WriteNew { path: path.clone() }, &payload);
    assert_eq!(answer, Response::Bool { value: true });
    assert_eq!(std::fs::read(&object).unwrap(), payload);
    serve.finish();
}

#[test]
fn serve_exits_when_its_client_vanishes() {
    let (env, sshd) = ssh_env();
    let store = open_over_ssh(&env, &sshd, None);
    assert!(store.snapshots(None).unwrap().is_empty());
    let serves = sshd.kill_connections();
    assert_eq!(serves.len(), 1, "one connection, one serve");
    assert!(exit_within(&serves, Duration::from_secs(10)), "the serve outlived its connection");
    assert!(files_under(&env.path("store/locks")).is_empty());
}

#[test]
fn a_dropped_connection_is_reconnected_on_the_next_request() {
    let (env, sshd) = ssh_env();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "a.txt", "hello\n", "one");
    let id = env.backup("app", &repo);
    let store = open_over_ssh(&env, &sshd, None);
    assert_eq!(store.snapshots(None).unwrap().len(), 1);
    assert_eq!(sshd.kill_serve_processes(), 1);
    // Reading is sent again on a new connection: the drop does not show.
    let snapshots = store.snapshots(Some("app")).unwrap();
    assert_eq!(snapshots[0].id, id);
    assert_eq!(sshd.serve_processes().len(), 1, "a new connection");

    // A write the connection dropped under is not resent blindly: it fails as a dropped
    // connection (which `run` retries), and the next request connects again. The serve is
    // stopped first, so that the write is surely sent and waiting when the serve dies.
    // (Registering a session begins with creating sessions/, a write.)
    let serves = sshd.serve_processes();
    assert_eq!(serves.len(), 1);
    signal(serves[0], "STOP");
    let err = std::thread::scope(|scope| {
        let session = scope.spawn(|| store.ensure_session());
        std::thread::sleep(Duration::from_millis(500));
        assert!(!session.is_finished(), "the write was answered by a stopped serve");
        signal(serves[0], "KILL");
        session.join().unwrap().unwrap_err()
    });
    let io = err.chain().find_map(|c| c.downcast_ref::<std::io::Error>()).expect("an io error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionAborted, "{err:#}");
    assert!(format!("{err:#}").contains("connection to backup-host was lost"), "{err:#}");
    assert!(repovault::scheduler::is_transient(&err));
    store.ensure_session().unwrap();
    let data = b"written after a drop".to_vec();
    store.put_object(&hash_hex(&data), &data).unwrap();
    assert_eq!(store.get_object(&hash_hex(&data)).unwrap(), data);
}

#[test]
fn a_connection_dropped_mid_run_fails_the_repository_and_run_retries_it() {
    let (env, sshd) = ssh_env();
    let repo = common::big_repo(&env.path("scan/big"), 6, 2_000_000);
    let scan = env.path("scan").to_string_lossy().into_owned();
    // Slowed down, so that it is still writing objects while its connections are dropped.
    let run = env
        .rv_command(&["run", "--scan", &scan, "--rate-limit", "4MiB", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(common::wait_for_stored_bytes(&env.path("store"), 500_000), "the backup stored nothing");
    // Every connection is dropped for a second: a reading request sent again on a new
    // connection meets the next drop too, so the backup cannot slip through (run's first
    // retry comes two seconds later).
    let mut dropped = 0;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        dropped += sshd.kill_serve_processes();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(dropped >= 1, "no connection to drop");
    let out = run.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("retrying") && err.contains("backup-host"), "the dropped connection was not retried: {err}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((summary["backed_up"].as_u64(), summary["failed"].as_u64()), (Some(1), Some(0)), "{summary}");
    env.restore_matches("big", &env.path("restored"), &repo);
}

#[test]
fn remote_command_names_the_binary_on_the_storage_host() {
    let mut env = Env::new();
    let sshd = Sshd::start(&env.path("sshd"));
    env.use_ssh(&sshd);
    std::fs::remove_file(sshd.remote_bin().join("repovault")).unwrap();
    let other = sshd.install_remote_command(
        "repovault-next",
        &format!("#!/bin/sh\nexec {} \"$@\"\n", env!("CARGO_BIN_EXE_repovault")),
    );
    let out = env.rv(&["init"]);
    assert_eq!(code(&out), 2, "no repovault on the remote PATH: {}", stderr(&out));
    env.rv_ok(&["init", "--remote-command", "repovault-next"]);
    let config = env.path("config.toml");
    std::fs::write(&config, format!("remote_command = \"{}\"\n", other.display())).unwrap();
    // The config key, as the flag.
    env.rv_ok(&["--config", config.to_str().unwrap(), "snapshots"]);
}

#[test]
fn concurrent_requests_share_a_few_connections() {
    let (env, sshd) = ssh_env();
    let store = open_over_ssh(&env, &sshd, None);
    let most = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most.fetch_max(sshd.serve_processes().len(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let workers: Vec<_> = (0..10)
            .map(|_| {
                scope.spawn(|| {
                    for _ in 0..30 {
                        assert_eq!(store.list_objects().unwrap(), Vec::<String>::new());
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let most = most.into_inner();
    assert!(most > 1, "threads asking at once got no connection of their own");
    assert!(most <= repovault::store::ssh::MAX_CONNECTIONS, "{most} connections");
    drop(store);
    assert!(exit_within(&sshd.serve_processes(), Duration::from_secs(10)), "serves outlived the store");
}

#[test]
fn requests_from_many_threads_are_pipelined_on_one_connection() {
    let (env, sshd) = ssh_env();
    let store = open_over_ssh(&env, &sshd, None);
    let serves = sshd.serve_processes();
    assert_eq!(serves.len(), 1, "opening the store made one connection");
    let id = hash_hex(b"not stored");
    let mut one_request = Vec::new();
    protocol::write_frame(&mut one_request, &Request::Exists { path: format!("objects/{}/{id}", &id[..2]) }, &[])
        .unwrap();
    // Every further connection fails, so that all requests have the one connection: the
    // pool would otherwise open more for them in the background.
    sshd.install_remote_command("repovault", "#!/bin/sh\nexit 1\n");
    // With its serve stopped, nothing is answered: requests sent without waiting for the
    // ones before them pile up unread in the serve's stdin.
    signal(serves[0], "STOP");
    std::thread::scope(|scope| {
        let askers: Vec<_> = (0..8).map(|_| scope.spawn(|| store.has_object(&id))).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut unread = 0;
        while unread < 3 * one_request.len() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            unread = unread_input(serves[0]);
        }
        signal(serves[0], "CONT");
        assert!(
            unread >= 3 * one_request.len(),
            "{unread} bytes of requests waited for the one connection's serve: fewer than 3 requests ({} bytes each) were sent ahead",
            one_request.len()
        );
        for asker in askers {
            assert!(!asker.join().unwrap().unwrap(), "the object is not stored");
        }
    });
}

/// Bytes written to the stdin pipe of process `pid` and not read yet.
fn unread_input(pid: u32) -> usize {
    use std::os::fd::AsRawFd;
    let pipe = std::fs::File::open(format!("/proc/{pid}/fd/0")).unwrap();
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points at one.
    let status = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut unread) };
    assert_eq!(status, 0, "FIONREAD on the stdin of {pid}: {}", std::io::Error::last_os_error());
    unread as usize
}

/// A storage host that stops answering with its link up (a `serve` stuck on a hung disk)
/// keeps no request waiting past `ssh_timeout`: the connection is given up, the request
/// fails as a dropped connection (which `run` retries), and the next one connects again.
#[test]
fn a_storage_host_that_stops_answering_fails_the_request_after_ssh_timeout() {
    let (env, sshd) = ssh_env();
    let access =
        Access { ssh_command: Some(sshd.rsh()), request_timeout: Some(Duration::from_secs(2)), ..Access::default() };
    let store = Store::open_with(&env.store_address(), &access).unwrap();
    let serves = sshd.serve_processes();
    assert_eq!(serves.len(), 1);
    signal(serves[0], "STOP");
    let started = std::time::Instant::now();
    // Registering a session begins with creating sessions/, a write, which is not resent.
    let err = store.ensure_session().unwrap_err();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(30), "{waited:?}");
    assert!(format!("{err:#}").contains("no answer from the storage host in 2s (ssh_timeout)"), "{err:#}");
    let io = err.chain().find_map(|c| c.downcast_ref::<std::io::Error>()).expect("an io error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionAborted, "{err:#}");
    assert!(repovault::scheduler::is_transient(&err));
    store.ensure_session().unwrap();
    // The stuck serve lost its client: once it runs again it finds its stdin closed and exits.
    signal(serves[0], "CONT");
    assert!(exit_within(&serves, Duration::from_secs(10)), "the stuck serve outlived its connection");
}

/// Sends `signal` (a name kill(1) knows) to `pid`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

#[test]
fn a_mercurial_repository_backs_up_and_restores_over_ssh() {
    let (env, _sshd) = ssh_env();
    let docs = common::hg::HgRepo::empty(&env.path("docs"));
    docs.commit("a", "one", &[]);
    docs.bookmark("main", ".");
    let first = env.backup("docs", &docs.path);
    docs.commit("a", "two", &[]);
    docs.set_phase("secret", ".");
    env.backup("docs", &docs.path);

    let log = |repo: &Path| common::hg::hg(repo, &["log", "--hidden", "-T", "{node} {phase} {bookmarks}\\n"]);
    let repo = &docs.path;
    let restored = env.path("restored");
    env.restore("docs", &restored, None);
    assert_eq!(log(&restored), log(repo));
    let old = env.path("restored-first");
    env.restore("docs", &old, Some(&first));
    assert_eq!(log(&old).lines().count(), 1, "{}", log(&old));
    let verify = env.rv(&["verify", "--deep"]);
    assert_eq!(code(&verify), 0, "verify --deep over ssh: {}", stderr(&verify));
}

/// Backs up `repo` as `name` with the given cache home (another host has its own); the
/// backup's JSON report.
fn backup_with_cache(env: &Env, name: &str, repo: &Path, cache: &Path) -> serde_json::Value {
    let out = env
        .rv_command(&["backup", "--json", "--name", name, &repo.to_string_lossy()])
        .env("XDG_CACHE_HOME", cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The one file under a cache home's directory for the store, `latest/<key>` or `config`.
fn cached_file(cache: &Path, what: &str) -> std::path::PathBuf {
    let stores: Vec<_> = std::fs::read_dir(cache.join("repovault")).unwrap().flatten().collect();
    assert_eq!(stores.len(), 1, "one store cached");
    let dir = stores[0].path();
    if what == "config" {
        return dir.join("config");
    }
    let latest: Vec<_> = std::fs::read_dir(dir.join("latest")).unwrap().flatten().collect();
    assert_eq!(latest.len(), 1, "one repository cached");
    latest[0].path()
}

/// Backs up `repo` as `name` through an ssh that takes 2 s to connect; asserts that the
/// source was read before the connection was open, and returns the JSON report.
fn backup_reading_the_source_first(env: &Env, sshd: &Sshd, name: &str, repo: &Path) -> serde_json::Value {
    let slow = env.path("slow-ssh");
    std::fs::write(&slow, format!("#!/bin/sh\nsleep 2\nexec {} \"$@\"\n", sshd.rsh())).unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = env
        .rv_command(&["backup", "--json", "--name", name, &repo.to_string_lossy()])
        .env("REPOVAULT_RSH", &slow)
        .env("REPOVAULT_LOG", "repovault=debug")
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    let selected = log.find("counted objects").expect("the source was read");
    let connected = log.find("connected").expect("the store was connected to");
    assert!(selected < connected, "the source was read only once connected:\n{log}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn an_incremental_backup_reads_its_source_while_the_connection_opens() {
    let (env, sshd) = ssh_env();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "a.txt", "one\n", "one");
    let first = env.backup("app", &repo);
    commit_file(&repo, "a.txt", "two\n", "two");
    // Against the snapshot cached by the first backup.
    let report = backup_reading_the_source_first(&env, &sshd, "app", &repo);
    assert_eq!(report["parent"].as_str(), Some(first.as_str()), "incremental to the first snapshot");
    env.restore_matches("app", &env.path("restored"), &repo);
}

#[test]
fn a_first_backup_into_a_store_this_host_made_reads_its_source_while_the_connection_opens() {
    let (env, sshd) = ssh_env();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "a.txt", "one\n", "one");
    let report = backup_reading_the_source_first(&env, &sshd, "app", &repo);
    assert_eq!(report["parent"], serde_json::Value::Null);
    env.restore_matches("app", &env.path("restored"), &repo);
}

#[test]
fn a_repository_another_host_backed_up_into_a_store_this_host_made_is_not_taken_for_new() {
    let (env, _sshd) = ssh_env();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "big.txt", &common::noise_text(2, 400_000), "big");
    // The store was made with this test's cache home: "here"; another host backs up first.
    let (here, there) = (env.path("cache"), env.path("cache-there"));
    let theirs = backup_with_cache(&env, "app", &repo, &there);
    commit_file(&repo, "a.txt", "one\n", "one");
    let ours = backup_with_cache(&env, "app", &repo, &here);
    assert_eq!(ours["parent"], theirs["snapshot"], "built on the other host's snapshot");
    env.restore_matches("app", &env.path("restored"), &repo);
}

#[test]
fn a_snapshot_another_host_took_since_is_not_trusted_from_the_cache() {
    let (env, _sshd) = ssh_env();
    let repo = new_repo(&env.path("src"));
    // Large enough that two small increments keep the next snapshot incremental.
    commit_file(&repo, "big.txt", &common::noise_text(1, 400_000), "big");
    commit_file(&repo, "a.txt", "one\n", "one");
    let (here, there) = (env.path("cache-here"), env.path("cache-there"));
    let first = backup_with_cache(&env, "app", &repo, &here);
    commit_file(&repo, "a.txt", "two\n", "two");
    let theirs = backup_with_cache(&env, "app", &repo, &there);
    assert_eq!(theirs["parent"], first["snapshot"]);
    commit_file(&repo, "a.txt", "three\n", "three");
    // This host's cache still says the first snapshot is the latest.
    let ours = backup_with_cache(&env, "app", &repo, &here);
    assert_eq!(ours["parent"], theirs["snapshot"], "built on the store's latest, not the cached one");
    assert_eq!(ours["objects"], theirs["objects"], "only what is new since the other host's snapshot");
    env.restore_matches("app", &env.path("restored"), &repo);
    env.rv_ok(&["verify"]);
}

#[test]
fn a_damaged_or_unwritable_cache_is_ignored() {
    let (env, _sshd) = ssh_env();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "big.txt", &common::noise_text(1, 400_000), "big");
    commit_file(&repo, "a.txt", "one\n", "one");
    let cache = env.path("cache-here");
    let first = backup_with_cache(&env, "app", &repo, &cache);

    // A manifest that still parses but is not the one stored (a ref changed), then one that
    // does not parse, and a config that does not parse: each backup builds on the store's
    // latest snapshot.
    let manifest = cached_file(&cache, "latest");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let head = first["snapshot"].as_str().unwrap();
    let tip = ref_state(&repo).lines().next().unwrap().split_whitespace().next().unwrap().to_owned();
    assert!(text.contains(&tip), "{text}");
    std::fs::write(&manifest, text.replace(&tip, &"0".repeat(40))).unwrap();
    commit_file(&repo, "a.txt", "two\n", "two");
    let second = backup_with_cache(&env, "app", &repo, &cache);
    assert_eq!(second["parent"].as_str(), Some(head));

    std::fs::write(cached_file(&cache, "latest"), b"{ not a manifest").unwrap();
    std::fs::write(cached_file(&cache, "config"), b"\x00\x01").unwrap();
    commit_file(&repo, "a.txt", "three\n", "three");
    let third = backup_with_cache(&env, "app", &repo, &cache);
    assert_eq!(third["parent"], second["snapshot"]);

    // A cache home that cannot be made (a file in its place) costs nothing but the cache.
    let not_a_dir = env.path("cache-file");
    std::fs::write(&not_a_dir, b"").unwrap();
    commit_file(&repo, "a.txt", "four\n", "four");
    let fourth = backup_with_cache(&env, "app", &repo, &not_a_dir);
    assert_eq!(fourth["parent"], third["snapshot"]);
    env.restore_matches("app", &env.path("restored"), &repo);
}

#[test]
fn a_store_made_anew_at_the_cached_place_is_not_taken_for_the_old_one() {
    let (env, _sshd) = ssh_env();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "a.txt", "one\n", "one");
    let cache = env.path("cache-here");
    backup_with_cache(&env, "app", &repo, &cache);
    // Another host (or a person on the storage host) makes a new store in its place.
    std::fs::remove_dir_all(env.path("store")).unwrap();
    Store::init(&env.store()).unwrap();
    commit_file(&repo, "a.txt", "two\n", "two");
    let report = backup_with_cache(&env, "app", &repo, &cache);
    assert_eq!(report["parent"], serde_json::Value::Null, "a full snapshot: the store holds nothing else");
    env.restore_matches("app", &env.path("restored"), &repo);
    env.rv_ok(&["verify"]);
}

/// The pack indexes this host keeps for a store on another host (an incremental backup reads
/// them to leave out what the chain holds) are checked before they are used: an index of
/// another pack saved under this pack's name, which lists the next commit's objects, would
/// leave them out of the next snapshot if trusted. The backup reads the store's own index
/// instead, keeps that, and the snapshot restores whole.
#[test]
fn a_pack_index_kept_on_this_host_is_checked_before_it_is_trusted() {
    let (env, _sshd) = ssh_env();
    let repo = new_repo(&env.path("src"));
    commit_file(&repo, "big.txt", &common::noise_text(3, 400_000), "big");
    let ahead = env.path("ahead");
    common::git(&env.path(""), &["clone", "-q", &repo.to_string_lossy(), &ahead.to_string_lossy()]);
    commit_file(&ahead, "next.txt", &common::noise_text(4, 20_000), "next");
    common::git(&ahead, &["repack", "-adq"]);
    let cache = env.path("cache-here");
    let first = backup_with_cache(&env, "app", &repo, &cache);

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cached_file(&cache, "latest")).unwrap()).unwrap();
    let pack = manifest["packs"][0]["checksum"].as_str().unwrap().to_owned();
    let kept = cached_file(&cache, "config").with_file_name("indexes").join(&pack);
    assert!(kept.is_file(), "the full backup keeps its pack's index on this host");
    let foreign = common::pack_file(&ahead).with_extension("idx");
    std::fs::copy(&foreign, &kept).unwrap();

    common::git(&repo, &["pull", "-q", "--ff-only", &ahead.to_string_lossy(), "main"]);
    let second = backup_with_cache(&env, "app", &repo, &cache);
    assert_eq!(second["parent"], first["snapshot"]);
    env.restore_matches("app", &env.path("restored"), &repo);
    assert_ne!(std::fs::read(&kept).unwrap(), std::fs::read(&foreign).unwrap(), "the store's index is kept instead");
}

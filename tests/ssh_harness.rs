//! The test sshd (tests/common/sshd.rs) itself, with the plain ssh client: what the ssh://
//! store tests rely on holds before repovault is involved.

mod common;

use common::{
    Env,
    sshd::{HOST, Sshd, alive, exit_within},
    stderr,
};
use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

#[test]
fn ssh_to_the_alias_succeeds() {
    let env = Env::new();
    let sshd = Sshd::start(&env.path("sshd"));
    let out = sshd.run("true");
    assert!(out.status.success(), "ssh {HOST} true: {}\n{}\nsshd log:\n{}", out.status, stderr(&out), sshd.log());
}

#[test]
fn rsh_and_url_reach_the_host_as_documented() {
    let env = Env::new();
    let sshd = Sshd::start(&env.path("sshd"));
    let mut env = env;
    assert_eq!(sshd.url(&env.path("store")), format!("ssh://backup-host{}", env.path("store").display()));
    assert_eq!(env.store_address(), env.store());
    env.use_ssh(&sshd);
    assert_eq!(env.store_address(), sshd.url(&env.path("store")));
    // REPOVAULT_RSH is split into words by repovault; so does a shell here.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} {HOST} 'echo $USER'", sshd.rsh()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sshd.user());
}

#[test]
fn changed_host_key_is_refused() {
    let env = Env::new();
    let mut sshd = Sshd::start(&env.path("sshd"));
    assert!(sshd.run("true").status.success(), "{}", sshd.log());
    sshd.change_host_key();
    let out = sshd.run("true");
    assert_eq!(out.status.code(), Some(255), "ssh must refuse a changed host key: {}", stderr(&out));
    assert!(stderr(&out).to_lowercase().contains("host key"), "{}", stderr(&out));
}

#[test]
fn unknown_host_key_is_refused() {
    let env = Env::new();
    let sshd = Sshd::start(&env.path("sshd"));
    sshd.forget_host_key();
    let out = sshd.run("true");
    assert_eq!(out.status.code(), Some(255), "ssh must refuse an unknown host key: {}", stderr(&out));
    assert!(stderr(&out).to_lowercase().contains("host key"), "{}", stderr(&out));
}

#[test]
fn repovault_under_test_is_on_the_remote_path() {
    let env = Env::new();
    let sshd = Sshd::start(&env.path("sshd"));
    let out = sshd.run("command -v repovault && repovault --version");
    assert!(out.status.success(), "{}\nsshd log:\n{}", stderr(&out), sshd.log());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = stdout.lines();
    let found = std::path::PathBuf::from(lines.next().unwrap());
    assert_eq!(found, sshd.remote_bin().join("repovault"));
    assert_eq!(
        found.canonicalize().unwrap(),
        std::path::Path::new(env!("CARGO_BIN_EXE_repovault")).canonicalize().unwrap()
    );
    assert_eq!(lines.next(), Some(concat!("repovault ", env!("CARGO_PKG_VERSION"))));
}

/// An ssh session running `repovault serve --stdio` where the remote repovault is a script
/// that waits for its input to end: a serve to kill, without needing a serve command.
fn fake_serve_session(sshd: &Sshd) -> Child {
    sshd.install_remote_command("repovault", "#!/bin/sh\nread -r line\n");
    sshd.ssh()
        .arg(HOST)
        .arg("repovault serve --stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn exits_within(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn kill_serve_processes_drops_that_servers_connection_only() {
    let env = Env::new();
    let sshd = Sshd::start(&env.path("sshd-a"));
    let other = Sshd::start(&env.path("sshd-b"));
    let mut session = fake_serve_session(&sshd);
    let mut other_session = fake_serve_session(&other);
    sshd.wait_for_serve_process(Duration::from_secs(20));
    let other_serves = other.wait_for_serve_process(Duration::from_secs(20));

    assert_eq!(sshd.kill_serve_processes(), 1);
    assert!(exits_within(&mut session, Duration::from_secs(10)), "the ssh client outlived its remote process");
    assert!(!session.wait().unwrap().success());
    assert!(sshd.serve_processes().is_empty());

    assert_eq!(other.serve_processes(), other_serves, "another server's serve was touched");
    assert!(other_session.try_wait().unwrap().is_none());
    let _ = other_session.kill();
    let _ = other_session.wait();
}

#[test]
fn kill_connections_drops_the_link_and_accepts_the_next() {
    let env = Env::new();
    let sshd = Sshd::start(&env.path("sshd"));
    let mut session = fake_serve_session(&sshd);
    let serves = sshd.wait_for_serve_process(Duration::from_secs(20));
    assert_eq!(sshd.kill_connections(), serves);
    assert!(exits_within(&mut session, Duration::from_secs(10)), "the ssh client outlived its connection");
    assert_eq!(session.wait().unwrap().code(), Some(255), "ssh reports a dropped connection as 255");
    // The fake serve ends when its input does, as a real one must.
    assert!(exit_within(&serves, Duration::from_secs(10)), "the orphaned serve never saw its input end");
    assert!(sshd.run("true").status.success(), "{}", sshd.log());
}

#[test]
fn dropping_the_server_ends_its_connections() {
    let env = Env::new();
    let sshd = Sshd::start(&env.path("sshd"));
    let mut session = fake_serve_session(&sshd);
    let serves = sshd.wait_for_serve_process(Duration::from_secs(20));
    drop(sshd);
    assert!(exits_within(&mut session, Duration::from_secs(10)), "the ssh client outlived the server");
    for pid in serves {
        assert!(!alive(pid), "serve {pid} outlived the server");
    }
}

#[test]
fn a_tmpfs_server_gives_the_remote_a_small_disk_only_it_sees() {
    let env = Env::new();
    let disk = env.path("disk");
    let sshd = Sshd::start_with_tmpfs(&env.path("sshd"), &disk, "2m");
    let mount_point = sshd.tmpfs_mount_point().unwrap().to_owned();
    assert_eq!(mount_point, disk.canonicalize().unwrap());
    let mp = mount_point.display();
    // `stat -f`: the file system's type and size as the remote sees them.
    let seen = sshd.run_ok(&format!("stat -f -c '%T %S %b' {mp}"));
    let fields: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(fields[0], "tmpfs", "{seen}");
    let bytes: u64 = fields[1].parse::<u64>().unwrap() * fields[2].parse::<u64>().unwrap();
    assert_eq!(bytes, 2 << 20, "{seen}");

    sshd.run_ok(&format!("echo remote > {mp}/file"));
    assert_eq!(sshd.run_ok(&format!("cat {mp}/file")), "remote\n");
    assert!(!disk.join("file").exists(), "the remote's disk is visible outside its namespace");
    let full = sshd.run(&format!("head -c 3000000 /dev/zero > {mp}/filler"));
    assert!(!full.status.success());
    assert!(stderr(&full).contains("No space left on device"), "{}", stderr(&full));

    // The disk ends with the server's namespace; a restart mounts a new, empty one.
    let mut sshd = sshd;
    sshd.stop();
    sshd.start_again();
    assert_eq!(sshd.run_ok(&format!("ls -A {mp}")), "");
}

//! A real OpenSSH server for the ssh:// store tests, reached the way an operator reaches a
//! storage host: through a `Host` alias in an ssh client config, with a known host key and
//! an authorized client key, in batch mode.
//!
//! Design:
//! - `Sshd::start(dir)` makes everything in `dir` (the test's own directory): a host key and a
//!   client key (`ssh-keygen -t ed25519`), `authorized_keys` with the client key, `known_hosts`
//!   with the host key, `sshd_config` and the client's `ssh_config`, then runs
//!   `/usr/sbin/sshd -D -e -f sshd_config` as a child on 127.0.0.1 and a free port and waits
//!   until the port accepts. sshd's log goes to `dir/sshd.log` (see `log()`).
//! - The remote PATH: sshd sets a fixed PATH for every session, so the config's
//!   `SetEnv PATH=...` puts `dir/remote-bin` first. That directory holds a `repovault` symlink
//!   to the binary under test (`CARGO_BIN_EXE_repovault`) and nothing else, so only repovault
//!   is added to the remote PATH. A test may replace it (`install_remote_command`), e.g. with
//!   a wrapper that speaks another protocol version. SetEnv rather than a `command=` wrapper
//!   in authorized_keys: the key stays unrestricted, so tests of a `command=`-restricted key
//!   add their own line (`authorize_key_with_options`) without fighting the harness's one.
//! - The client config names `backup-host`: `ssh -F <config> backup-host` (what `rsh()`
//!   returns, for REPOVAULT_RSH) reads no `~/.ssh/config` and no system config, uses only the
//!   test's key (IdentitiesOnly, no agent), and checks the host key strictly against the
//!   test's known_hosts, in batch mode: an unknown or changed key fails, never prompts.
//! - Killing: `kill_serve_processes()` and `kill_connections()` kill only processes
//!   descended from this sshd (found in /proc), never by name machine-wide: tests of other
//!   binaries and other threads run their own servers and `repovault serve`s at the same time.
//!   Drop kills this sshd and every connection it still has.
//! - A storage host with a small disk: `Sshd::start_with_tmpfs(dir, mount_point, size)` runs
//!   sshd under `unshare --mount` in a private mount namespace where a tmpfs of `size` is
//!   mounted at `mount_point` first, so every `repovault serve` (and every command `Sshd::run`
//!   sends) writes to that tmpfs, while the test process sees only the empty directory
//!   under it: the test reaches the disk through ssh alone, as an operator would. The
//!   namespace ends with sshd's last process; a restart (`start_again`, `change_host_key`)
//!   mounts a new, empty tmpfs.
//! - Anything that cannot start panics with the reason and sshd's log: never a skip.
#![allow(dead_code)]

use std::{
    net::{TcpListener, TcpStream},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

pub const SSHD: &str = "/usr/sbin/sshd";

/// The `Host` alias of the client config.
pub const HOST: &str = "backup-host";

/// A running sshd for one test; killed, with its connections, on Drop.
pub struct Sshd {
    dir: PathBuf,
    port: u16,
    user: String,
    child: Option<Child>,
    /// Set by `start_with_tmpfs`: sshd runs in a mount namespace with this disk mounted.
    tmpfs: Option<Tmpfs>,
}

/// A tmpfs mounted for sshd's namespace only.
#[derive(Debug, Clone)]
struct Tmpfs {
    mount_point: PathBuf,
    /// As tmpfs's `size=` option takes it: `16m`.
    size: String,
}

/// Run by `sh -c` inside the new mount namespace, with the size, the mount point, then
/// sshd's command line as arguments. Exits 97 when the mount fails, which `spawn` tells from
/// sshd failing to bind its port (worth another port) and panics on.
const MOUNT_THEN_EXEC: &str = r#"mount -t tmpfs -o "size=$1" repovault-test-disk "$2" || { echo "cannot mount a tmpfs of size $1 at $2 in a private mount namespace" >&2; exit 97; }; shift 2; exec "$@""#;
const MOUNT_FAILED: i32 = 97;

impl Sshd {
    /// Makes keys and configs in `dir` (created if missing) and starts sshd on a free
    /// 127.0.0.1 port; panics with the reason when it cannot.
    pub fn start(dir: &Path) -> Sshd {
        Self::start_in_namespace(dir, None)
    }

    /// As `start`, but sshd and all it runs see a tmpfs of `size` (tmpfs's `size=` syntax,
    /// e.g. `16m`) mounted at `mount_point` (created if missing), in a mount namespace of
    /// their own: the storage host's disk, which only commands run over ssh can reach.
    /// Needs root, or unprivileged user namespaces; panics with the reason when the mount
    /// fails.
    pub fn start_with_tmpfs(dir: &Path, mount_point: &Path, size: &str) -> Sshd {
        std::fs::create_dir_all(mount_point).unwrap_or_else(|e| panic!("cannot create {}: {e}", mount_point.display()));
        let mount_point = mount_point.canonicalize().unwrap();
        Self::start_in_namespace(dir, Some(Tmpfs { mount_point, size: size.to_owned() }))
    }

    fn start_in_namespace(dir: &Path, tmpfs: Option<Tmpfs>) -> Sshd {
        assert!(Path::new(SSHD).exists(), "{SSHD} is missing: install openssh-server (scripts/test does)");
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let dir = dir.canonicalize().unwrap();
        if is_root() {
            // sshd running as root insists on its privilege separation directory; the package
            // makes it at boot through systemd, which a container does not run.
            std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        }
        keygen(&dir.join("host_key"), "repovault-test-host");
        keygen(&dir.join("client_key"), "repovault-test-client");
        let client_public = std::fs::read_to_string(dir.join("client_key.pub")).unwrap();
        std::fs::write(dir.join("authorized_keys"), client_public).unwrap();

        let remote_bin = dir.join("remote-bin");
        std::fs::create_dir_all(&remote_bin).unwrap();
        symlink(env!("CARGO_BIN_EXE_repovault"), remote_bin.join("repovault")).unwrap();

        let mut sshd = Sshd { dir, port: 0, user: current_user(), child: None, tmpfs };
        // A port picked now may be taken by the time sshd binds it: try a few.
        let mut last_error = String::new();
        for _ in 0..5 {
            sshd.port = free_port();
            match sshd.spawn() {
                Ok(()) => {
                    sshd.write_client_files();
                    return sshd;
                }
                Err(e) => last_error = e,
            }
        }
        panic!("sshd did not start: {last_error}");
    }

    /// Writes sshd_config for the current port and runs sshd until the port accepts.
    fn spawn(&mut self) -> Result<(), String> {
        let config = self.dir.join("sshd_config");
        std::fs::write(&config, self.server_config()).unwrap();
        let check = Command::new(SSHD).arg("-t").arg("-f").arg(&config).output().unwrap();
        assert!(check.status.success(), "sshd -t rejects {}:\n{}", config.display(), lossy(&check.stderr));

        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file()).unwrap();
        let mut command = match &self.tmpfs {
            None => Command::new(SSHD),
            Some(tmpfs) => {
                let mut command = Command::new("unshare");
                if !is_root() {
                    // mount(8) wants uid 0: a user namespace mapping us to root grants it.
                    command.arg("--map-root-user");
                }
                command
                    .args(["--mount", "--propagation", "private", "sh", "-c", MOUNT_THEN_EXEC, "sh", &tmpfs.size])
                    .arg(&tmpfs.mount_point);
                if !is_root() {
                    // sshd must run as the test's user, as outside (as root it would switch
                    // to users the namespace cannot map): a nested namespace maps us back.
                    // SAFETY: getuid and getgid have no preconditions.
                    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
                    command.args(["unshare", &format!("--map-user={uid}"), &format!("--map-group={gid}")]);
                }
                command.arg(SSHD);
                command
            }
        };
        let mut child = command
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", command.get_program()));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait().unwrap() {
                assert_ne!(status.code(), Some(MOUNT_FAILED), "no tmpfs for sshd:\n{}", self.log());
                return Err(format!("sshd on port {} exited ({status}):\n{}", self.port, self.log()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("sshd did not listen on port {} in 20 s:\n{}", self.port, self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn server_config(&self) -> String {
        let dir = self.dir.display();
        // Starts too close together are refused by the default MaxStartups (10): a run with
        // several jobs, or parallel tests, may open many connections at once.
        format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {dir}/host_key\n\
             PidFile none\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             StrictModes no\n\
             UsePAM no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\n\
             AllowUsers {user}\n\
             UseDNS no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             MaxStartups 100\n\
             MaxSessions 100\n\
             SetEnv PATH={dir}/remote-bin:/usr/local/bin:/usr/bin:/bin\n",
            port = self.port,
            user = self.user,
        )
    }

    /// The client side: known_hosts with the current host key, and the config with the alias.
    fn write_client_files(&self) {
        let host_public = std::fs::read_to_string(self.dir.join("host_key.pub")).unwrap();
        let key = host_public.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        std::fs::write(self.known_hosts(), format!("[127.0.0.1]:{} {key}\n", self.port)).unwrap();
        let dir = self.dir.display();
        let config = format!(
            "Host {HOST}\n\
             \tHostName 127.0.0.1\n\
             \tPort {port}\n\
             \tUser {user}\n\
             \tIdentityFile {dir}/client_key\n\
             \tIdentitiesOnly yes\n\
             \tIdentityAgent none\n\
             \tUserKnownHostsFile {known_hosts}\n\
             \tGlobalKnownHostsFile /dev/null\n\
             \tStrictHostKeyChecking yes\n\
             \tUpdateHostKeys no\n\
             \tBatchMode yes\n\
             \tConnectTimeout 10\n",
            port = self.port,
            user = self.user,
            known_hosts = self.known_hosts().display(),
        );
        std::fs::write(self.client_config(), config).unwrap();
    }

    /// The ssh client config file holding the `backup-host` alias.
    pub fn client_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The command to put in REPOVAULT_RSH (or config `ssh_command`): `ssh -F <config>`.
    pub fn rsh(&self) -> String {
        format!("ssh -F {}", self.client_config().display())
    }

    /// `ssh://backup-host/<path>` for an absolute `path` on this (the same) machine.
    pub fn url(&self, path: &Path) -> String {
        assert!(path.is_absolute(), "a store URL needs an absolute path: {}", path.display());
        format!("ssh://{HOST}{}", path.display())
    }

    /// `ssh -F <config>` ready for arguments (`backup-host` and a command).
    pub fn ssh(&self) -> Command {
        let mut command = Command::new("ssh");
        command.arg("-F").arg(self.client_config()).stdin(Stdio::null());
        command
    }

    /// Runs `command` (a remote shell command line) on backup-host.
    pub fn run(&self, command: &str) -> Output {
        self.ssh().arg(HOST).arg(command).output().expect("run ssh")
    }

    /// Runs `command` on backup-host and asserts it succeeded; returns its stdout.
    pub fn run_ok(&self, command: &str) -> String {
        let out = self.run(command);
        assert!(out.status.success(), "ssh {HOST} {command:?}: {}\n{}", out.status, lossy(&out.stderr));
        lossy(&out.stdout)
    }

    /// Where `start_with_tmpfs` mounted the storage host's disk.
    pub fn tmpfs_mount_point(&self) -> Option<&Path> {
        self.tmpfs.as_ref().map(|t| t.mount_point.as_path())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The directory first on the remote PATH; holds `repovault`.
    pub fn remote_bin(&self) -> PathBuf {
        self.dir.join("remote-bin")
    }

    /// Puts an executable script `name` with `contents` first on the remote PATH (replacing
    /// the `repovault` symlink when `name` is "repovault"); returns its path.
    pub fn install_remote_command(&self, name: &str, contents: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.remote_bin().join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Adds a line for the client key with `options` (e.g. `command="...",restrict`) to
    /// authorized_keys, in place of the unrestricted one: sshd uses the first matching line.
    pub fn authorize_key_with_options(&self, options: &str) {
        let client_public = std::fs::read_to_string(self.dir.join("client_key.pub")).unwrap();
        std::fs::write(self.dir.join("authorized_keys"), format!("{options} {client_public}")).unwrap();
    }

    /// sshd's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    /// Restarts sshd on the same port with a new host key, leaving the client's known_hosts
    /// with the old one: the next connection meets a changed host key.
    pub fn change_host_key(&mut self) {
        self.stop();
        let old = std::fs::read_to_string(self.dir.join("host_key.pub")).unwrap();
        std::fs::remove_file(self.dir.join("host_key")).unwrap();
        std::fs::remove_file(self.dir.join("host_key.pub")).unwrap();
        keygen(&self.dir.join("host_key"), "repovault-test-host-changed");
        assert_ne!(old, std::fs::read_to_string(self.dir.join("host_key.pub")).unwrap());
        if let Err(e) = self.spawn() {
            panic!("sshd did not start again: {e}");
        }
    }

    /// Empties the client's known_hosts: the next connection meets an unknown host key.
    pub fn forget_host_key(&self) {
        std::fs::write(self.known_hosts(), "").unwrap();
    }

    /// Kills sshd and every connection it has (a storage host going away).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Connections first: once the listener is gone they are orphans nobody can name.
            kill_descendants(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped sshd again, same port and host key: the storage host is back.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "sshd is running");
        if let Err(e) = self.spawn() {
            panic!("sshd did not start again: {e}");
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The pids of the `repovault serve` processes this sshd's connections are running (a
    /// process counts once it has exec'd a file named `repovault` with a `serve` argument).
    pub fn serve_processes(&self) -> Vec<u32> {
        let Some(child) = &self.child else { return Vec::new() };
        descendants(child.id()).into_iter().filter(|&pid| is_serve(pid)).collect()
    }

    /// Waits up to `timeout` for a `repovault serve` to run; panics with sshd's log if none does.
    pub fn wait_for_serve_process(&self, timeout: Duration) -> Vec<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.serve_processes();
            if !pids.is_empty() {
                return pids;
            }
            assert!(
                Instant::now() < deadline,
                "no `repovault serve` ran under this sshd within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills (SIGKILL) every `repovault serve` this sshd runs, dropping those connections
    /// mid-run as `pkill -f 'repovault serve'` would, but only this server's; returns how
    /// many were killed, so a test can assert it did drop something.
    pub fn kill_serve_processes(&self) -> usize {
        let pids = self.serve_processes();
        kill_all(&pids);
        pids.len()
    }

    /// Kills (SIGKILL) every connection's sshd processes, and only those, keeping the
    /// listener: the link dies under the client as when a network or sshd goes away, and the
    /// commands the connections ran are left running without their client (their stdin ends).
    /// Returns the pids of the `repovault serve` processes so orphaned, for `exit_within`
    /// (a serve whose client vanished must exit). The next connection is accepted.
    pub fn kill_connections(&self) -> Vec<u32> {
        let Some(child) = &self.child else { return Vec::new() };
        let serves = self.serve_processes();
        let connections: Vec<u32> = descendants(child.id())
            .into_iter()
            .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "sshd"))
            .collect();
        assert!(!connections.is_empty(), "this sshd has no connection to kill");
        kill_all(&connections);
        serves
    }
}

/// Whether every process in `pids` has exited (or is a zombie) within `timeout`.
pub fn exit_within(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|&pid| !alive(pid)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Running, as opposed to gone or a zombie nobody reaped (a container's init may never reap).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    assert!(out.status.success(), "id -un: {}", lossy(&out.stderr));
    lossy(&out.stdout).trim().to_owned()
}

fn keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen (install openssh-client)");
    assert!(out.status.success(), "ssh-keygen -f {}: {}", path.display(), lossy(&out.stderr));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Process {
    pid: u32,
    ppid: u32,
    zombie: bool,
}

/// Every descendant of `root` (not `root`), zombies included, from /proc's parent links.
fn descendant_processes(root: u32) -> Vec<Process> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        // The process may be gone between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name (field 2) may hold spaces and parentheses: the fields after it
        // start after its last ')'.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let mut fields = after.split_whitespace();
        let state = fields.next();
        if let Some(ppid) = fields.next().and_then(|s| s.parse::<u32>().ok()) {
            all.push(Process { pid, ppid, zombie: state == Some("Z") });
        }
    }
    let mut found: Vec<Process> = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        let (children, rest): (Vec<Process>, Vec<Process>) = all.into_iter().partition(|p| p.ppid == parent);
        all = rest;
        parents.extend(children.iter().map(|p| p.pid));
        found.extend(children);
    }
    found
}

/// The live descendants of `root`.
fn descendants(root: u32) -> Vec<u32> {
    descendant_processes(root).into_iter().filter(|p| !p.zombie).map(|p| p.pid).collect()
}

/// Kills every descendant of `root`, leaves first, each reaped by its parent before the parent
/// is killed: a process killed together with its parent is left to init, and a container's
/// init may never reap it. Gives up waiting after a few seconds (then kills what is left at
/// once). Returns how many processes were killed.
fn kill_descendants(root: u32) -> usize {
    let mut killed = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let processes = descendant_processes(root);
        if processes.is_empty() {
            return killed.len();
        }
        let live = processes.iter().filter(|p| !p.zombie);
        let targets: Vec<u32> = if Instant::now() > deadline {
            live.map(|p| p.pid).collect()
        } else {
            live.filter(|p| !processes.iter().any(|c| c.ppid == p.pid)).map(|p| p.pid).collect()
        };
        kill_all(&targets);
        killed.extend(targets);
        if Instant::now() > deadline + Duration::from_secs(1) {
            return killed.len();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` runs a file named `repovault` with a `serve` argument. Matched on the file
/// run, not on the command line: the remote shell running `repovault serve --stdio` has
/// those words in its command line too, and so do the subshells its startup files fork.
fn is_serve(pid: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    comm.trim_end() == "repovault" && args.split(|&b| b == 0).any(|arg| arg == b"serve")
}

fn kill_all(pids: &[u32]) {
    for &pid in pids {
        // SAFETY: kill has no memory preconditions; a pid that exited meanwhile gives ESRCH.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

//! Real PostgreSQL servers for the database-mode tests: a throwaway PostgreSQL 15 cluster per
//! test and a real pgbouncer in transaction pooling mode in front of it.
//!
//! Design:
//! - `initdb` runs once per target directory (`$CARGO_TARGET_TMPDIR/pg15-template`, kept
//!   between runs); every `PgCluster::start()` copies that data directory into its own short
//!   temp dir (`/tmp/pgXXXXXX`, also the unix socket directory: socket paths are limited to
//!   107 bytes) and starts a server there with fsync off, listening on a free 127.0.0.1 port.
//!   A cluster per test keeps tests independent (a restart test stops only its own server)
//!   and costs a copy and a start, a fraction of a second.
//! - initdb, postgres and pgbouncer refuse to run as root: when the tests run as root they
//!   run as the `postgres` user (the equivalent of `runuser -u postgres --`), in directories
//!   it owns.
//! - Authentication is `trust` for every role but `PASSWORD_ROLE`, which needs its password
//!   (scram-sha-256): tests of credentials create it with `create_db_with_password`.
//! - `PgCluster::standby_of` makes a streaming hot standby (pg_basebackup -R), for reading
//!   the feed from a replica.
//! - Everything is stopped on Drop (`pg_ctl stop -m immediate`; pgbouncer killed).
//! - Anything that cannot start panics with the reason and the server's log: never a skip.
#![allow(dead_code)]

use std::{
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// Where this machine's PostgreSQL 15 server binaries live (Debian's postgresql-15).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// The role tests connect as (trusted, superuser).
pub const SUPERUSER: &str = "postgres";

/// The one role that must give its password (see `create_db_with_password`).
pub const PASSWORD_ROLE: &str = "secretrole";

/// Only `PASSWORD_ROLE` must give a password (the first matching line of pg_hba.conf wins).
const PG_HBA: &str = "\
local all all trust
local replication all trust
host all secretrole 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
";

/// The uid and gid the servers run as: `postgres` when the tests run as root, else the
/// current user (who may run initdb).
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("no `postgres` user: install postgresql-15 (scripts/test does)");
    let fields: Vec<&str> = entry.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

/// A command that runs as the server user.
fn as_server_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    if let Some((uid, gid)) = server_user() {
        command.uid(uid).gid(gid);
    }
    command.env_remove("PGDATA").env_remove("PGHOST").env_remove("PGPORT").env("LC_ALL", "C");
    command
}

fn give_to_server_user(path: &Path) {
    if let Some((uid, gid)) = server_user() {
        let out = Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(path).output().unwrap();
        assert!(out.status.success(), "chown {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
}

fn run_checked(mut command: Command, what: &str) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: cannot run it: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A data directory made by initdb once, copied by every cluster.
fn template_data_dir() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let template = base.join("pg15-template");
        if template.join("PG_VERSION").exists() && template.join("pg_hba.conf").exists() {
            return template;
        }
        assert!(
            Path::new(PG_BIN).join("initdb").exists(),
            "{PG_BIN}/initdb is missing: install postgresql-15 (scripts/test does)"
        );
        std::fs::create_dir_all(&base).unwrap();
        // initdb into a private directory, then rename: a run interrupted half-way leaves no
        // half-made template behind.
        let scratch = tempfile::Builder::new().prefix("pg15-initdb").tempdir_in(&base).unwrap();
        give_to_server_user(scratch.path());
        let data = scratch.path().join("data");
        let mut initdb = as_server_user(Path::new(PG_BIN).join("initdb"));
        initdb.arg("-D").arg(&data).args(["-A", "trust", "--no-sync", "-U", SUPERUSER, "-E", "UTF8", "--locale=C"]);
        run_checked(initdb, "initdb");
        std::fs::write(data.join("pg_hba.conf"), PG_HBA).unwrap();
        give_to_server_user(&data);
        match std::fs::rename(&data, &template) {
            Ok(()) => {}
            // Another test binary made it first: use theirs.
            Err(_) if template.join("pg_hba.conf").exists() => {}
            Err(e) => panic!("cannot install the PostgreSQL template {}: {e}", template.display()),
        }
        template
    })
}

/// A TCP port on 127.0.0.1 that nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A throwaway PostgreSQL 15 server, stopped (and its files removed) on Drop.
pub struct PgCluster {
    /// Short, owned by the server user: the data directory, the log and the unix socket.
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
}

impl PgCluster {
    /// Starts a fresh cluster; panics with the reason when it cannot.
    pub fn start() -> PgCluster {
        let template = template_data_dir();
        let dir = tempfile::Builder::new().prefix("pg").tempdir_in("/tmp").unwrap();
        let mut copy = Command::new("cp");
        copy.arg("-a").arg(template).arg(dir.path().join("data"));
        run_checked(copy, "copying the PostgreSQL template");
        // Written per cluster, so that a template kept from an older run has the current rules.
        std::fs::write(dir.path().join("data/pg_hba.conf"), PG_HBA).unwrap();
        give_to_server_user(dir.path());
        PgCluster::start_in(dir)
    }

    /// A hot standby of `primary` (`pg_basebackup -R`, streaming replication), read-only, on
    /// its own port; stopped on Drop.
    pub fn standby_of(primary: &PgCluster) -> PgCluster {
        let dir = tempfile::Builder::new().prefix("pg").tempdir_in("/tmp").unwrap();
        give_to_server_user(dir.path());
        let mut basebackup = as_server_user(Path::new(PG_BIN).join("pg_basebackup"));
        basebackup
            .arg("-h")
            .arg(primary.socket_dir())
            .args(["-p", &primary.port().to_string(), "-U", SUPERUSER, "-R", "-c", "fast", "-X", "stream", "-D"])
            .arg(dir.path().join("data"));
        run_checked(basebackup, "pg_basebackup");
        PgCluster::start_in(dir)
    }

    /// Starts the data directory in `dir` on a free port.
    fn start_in(dir: tempfile::TempDir) -> PgCluster {
        // A port picked now may be taken by the time the server binds it: try a few.
        let mut cluster = PgCluster { dir, port: 0, running: false };
        let mut last_error = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.running = true;
                    return cluster;
                }
                Err(e) => last_error = e,
            }
        }
        panic!("PostgreSQL did not start: {last_error}");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    fn pg_ctl(&self) -> Command {
        let mut command = as_server_user(Path::new(PG_BIN).join("pg_ctl"));
        command.arg("-D").arg(self.data_dir());
        command
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        // fsync off: nothing here must survive the machine. synchronous_commit stays on so that
        // a committed transaction survives `restart()` (an immediate stop), as on a real server.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off \
             -c shared_buffers=16MB -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .pg_ctl()
            .args(["-w", "-t", "60", "-l"])
            .arg(self.log_file())
            .args(["-o", &options, "start"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start on port {}: {}{}\nserver log:\n{}",
                self.port,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            ))
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket directory (also usable as `host=` in a conninfo).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A URL for `dbname` as the trusted superuser, over TCP.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{dbname}", self.port)
    }

    /// A URL for `dbname` as `user` with `password`, over TCP.
    pub fn url_as(&self, user: &str, password: &str, dbname: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{dbname}", self.port)
    }

    /// Creates an empty database; returns its URL.
    pub fn create_db(&self, name: &str) -> String {
        psql(&self.url("postgres"), &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    /// Creates a database owned by `PASSWORD_ROLE`, which must log in with `password` (the
    /// role is created, or given that password); returns the database's URL with the password.
    pub fn create_db_with_password(&self, name: &str, password: &str) -> String {
        let admin = self.url("postgres");
        let exists = psql(&admin, &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{PASSWORD_ROLE}'"));
        let verb = if exists == "0" { "CREATE" } else { "ALTER" };
        psql(&admin, &format!("{verb} ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{password}'"));
        psql(&admin, &format!("CREATE DATABASE \"{name}\" OWNER {PASSWORD_ROLE}"));
        self.url_as(PASSWORD_ROLE, password, name)
    }

    /// Stops the server at once, as a crash or a kill would (`pg_ctl stop -m immediate`).
    pub fn stop(&mut self) {
        if self.running {
            let mut stop = self.pg_ctl();
            stop.args(["-w", "-m", "immediate", "stop"]);
            run_checked(stop, "pg_ctl stop");
            self.running = false;
        }
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&mut self) {
        assert!(!self.running, "the server is running");
        if let Err(e) = self.pg_ctl_start() {
            panic!("PostgreSQL did not start again: {e}");
        }
        self.running = true;
    }

    /// Stops the server at once and starts it again: every connection is dropped.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    pub fn is_running(&self) -> bool {
        self.running
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            // Not run_checked: a panic in drop during a failing test would abort the process.
            let _ = self.pg_ctl().args(["-w", "-m", "immediate", "stop"]).output();
        }
    }
}

/// A real pgbouncer in transaction pooling mode (pool size 2 per database and user) in front of
/// a cluster; killed on Drop.
pub struct Pgbouncer {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Pgbouncer {
    /// Starts pgbouncer for every database of `cluster`; panics with its log when it cannot.
    pub fn start(cluster: &PgCluster) -> Pgbouncer {
        assert!(Path::new(PGBOUNCER).exists(), "{PGBOUNCER} is missing: install pgbouncer (scripts/test does)");
        let dir = tempfile::Builder::new().prefix("pgb").tempdir_in("/tmp").unwrap();
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("pgbouncer.ini");
            std::fs::write(&config, bouncer_config(cluster.port(), port, dir.path())).unwrap();
            std::fs::write(dir.path().join("userlist.txt"), format!("\"{SUPERUSER}\" \"\"\n")).unwrap();
            give_to_server_user(dir.path());
            let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
            give_to_server_user(dir.path());
            let mut child = as_server_user(PGBOUNCER)
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {PGBOUNCER}: {e}"));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if listening(port) {
                    return Pgbouncer { dir, port, child };
                }
                if let Some(status) = child.try_wait().unwrap() {
                    last_error = format!("pgbouncer exited ({status}):\n{}", bouncer_log(dir.path()));
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!("pgbouncer did not listen on {port}:\n{}", bouncer_log(dir.path()));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("pgbouncer did not start: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `dbname` through the pooler, as the trusted superuser.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{dbname}", self.port)
    }

    /// pgbouncer's log so far (for failure messages).
    pub fn log(&self) -> String {
        bouncer_log(self.dir.path())
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bouncer_config(server_port: u16, port: u16, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "[databases]\n\
         * = host=127.0.0.1 port={server_port}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir = {dir}\n\
         auth_type = trust\n\
         auth_file = {dir}/userlist.txt\n\
         pool_mode = transaction\n\
         default_pool_size = 2\n\
         min_pool_size = 0\n\
         reserve_pool_size = 0\n\
         max_client_conn = 500\n\
         ignore_startup_parameters = extra_float_digits\n\
         logfile = {dir}/pgbouncer.log\n\
         pidfile = {dir}/pgbouncer.pid\n\
         admin_users = {SUPERUSER}\n"
    )
}

fn bouncer_log(dir: &Path) -> String {
    let mut log = std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
    log.push_str(&std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default());
    log
}

fn psql_command(url: &str, sql: &str) -> Command {
    let psql = Path::new(PG_BIN).join("psql");
    let psql = if psql.exists() { psql } else { PathBuf::from("/usr/bin/psql") };
    let mut command = Command::new(psql);
    command
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-F", "|", "-d", url, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    command
}

/// Runs `sql` with psql (unaligned, tuples only, fields separated by `|`); panics with psql's
/// error when it fails; returns stdout without its final newline.
pub fn psql(url: &str, sql: &str) -> String {
    match try_psql(url, sql) {
        Ok(out) => out,
        Err(e) => panic!("psql failed: {e}\nSQL: {sql}"),
    }
}

/// `psql`, returning psql's error instead of panicking.
pub fn try_psql(url: &str, sql: &str) -> Result<String, String> {
    let out = psql_command(url, sql).output().map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The rows `sql` returns, each split into its `|`-separated fields.
pub fn psql_rows(url: &str, sql: &str) -> Vec<Vec<String>> {
    let out = psql(url, sql);
    out.lines().filter(|l| !l.is_empty()).map(|l| l.split('|').map(str::to_owned).collect()).collect()
}

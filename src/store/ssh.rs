//! A store on another host, `ssh://[user@]host[:port]/absolute/path`, reached through the
//! system's OpenSSH client (so `~/.ssh/config`, `known_hosts` and the agent work as they do
//! for git and rsync) running `repovault serve --stdio` there. See [`super::protocol`].
//!
//! Each connection carries one request at a time; threads that ask at the same time (the
//! backups of `run --jobs N`, heartbeats) get a connection each, up to [`MAX_CONNECTIONS`],
//! kept open for the next requests: one ssh channel is limited to about its window per
//! round trip, and every request waits for the storage host's fsync, so parallel jobs need
//! parallel channels; the cap stays under sshd's default `MaxStartups` (10). A
//! connection that dies is dropped and the request fails with `ConnectionAborted` (which
//! `run` retries); the next request connects again. Requests that change nothing are sent
//! once more on a new connection before failing, since nothing is lost by asking twice.

use std::{
    collections::VecDeque,
    io::{self, BufRead, BufReader, BufWriter, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;

use super::{
    Access,
    backend::{Backend, RootState},
    protocol::{self, MAGIC, PROTOCOL_VERSION, Request, Response},
};
use crate::error::usage;

/// The parts of an ssh:// store address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

/// Parses `ssh://[user@]host[:port]/absolute/path` (`[v6 address]` in brackets).
pub fn parse_url(url: &str) -> std::result::Result<SshTarget, String> {
    let rest = url.strip_prefix("ssh://").ok_or("it does not start with ssh://")?;
    let slash = rest.find('/').ok_or("it has no path: give ssh://[user@]host[:port]/absolute/path")?;
    let (authority, path) = rest.split_at(slash);
    if path.len() < 2 {
        return Err("its path is the root directory".into());
    }
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((user, host_port)) => (Some(user.to_owned()), host_port),
        None => (None, authority),
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or("an unclosed [ in its host")?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    let port = port.map(|p| p.parse::<u16>().map_err(|_| format!("its port {p:?} is not a number"))).transpose()?;
    // A leading `-` would be read by ssh as an option.
    let bad = |s: &str| s.is_empty() || s.starts_with('-') || s.chars().any(|c| c.is_whitespace() || c.is_control());
    if bad(host) {
        return Err(format!("its host {host:?} is not a host name"));
    }
    if let Some(user) = &user
        && bad(user)
    {
        return Err(format!("its user {user:?} is not a user name"));
    }
    if path.chars().any(|c| c.is_control()) {
        return Err("its path holds control characters".into());
    }
    Ok(SshTarget { user, host: host.to_owned(), port, path: path.to_owned() })
}

/// Quotes `s` for the remote shell, which ssh hands the command line to.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub struct SshBackend {
    location: String,
    target: SshTarget,
    /// The whole command line: the ssh command, its options, the host and the remote command.
    argv: Vec<String>,
    pool: Mutex<Pool>,
    /// Signalled when a connection is given back or closed.
    freed: Condvar,
}

/// Connections to the storage host at most, whatever the number of threads asking.
pub const MAX_CONNECTIONS: usize = 4;

#[derive(Default)]
struct Pool {
    /// Open connections no request is using.
    idle: Vec<Connection>,
    /// Open connections, idle or in use (or being opened).
    open: usize,
}

impl SshBackend {
    /// Parses `url` and prepares the ssh command; connects on the first request.
    pub fn new(url: &str, access: &Access) -> Result<SshBackend> {
        let target = parse_url(url).map_err(|why| usage(format!("store {url}: not a valid ssh:// address: {why}")))?;
        let rsh = std::env::var("REPOVAULT_RSH")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| access.ssh_command.clone())
            .unwrap_or_else(|| "ssh".into());
        let mut argv: Vec<String> = rsh.split_whitespace().map(str::to_owned).collect();
        if argv.is_empty() {
            return Err(usage(format!("store {url}: the ssh command (REPOVAULT_RSH or ssh_command) is empty")));
        }
        // Batch mode: never a prompt (a host key nobody confirmed is refused, not asked
        // about); keepalives: a dead link is noticed within a minute instead of hanging.
        for option in ["BatchMode=yes", "ServerAliveInterval=15", "ServerAliveCountMax=4"] {
            argv.extend(["-o".into(), option.into()]);
        }
        if let Some(port) = target.port {
            argv.extend(["-p".into(), port.to_string()]);
        }
        if let Some(user) = &target.user {
            argv.extend(["-l".into(), user.clone()]);
        }
        argv.push(target.host.clone());
        let remote = access.remote_command.as_deref().filter(|s| !s.trim().is_empty()).unwrap_or("repovault");
        argv.push(format!("{remote} serve --stdio --store {}", shell_quote(&target.path)));
        Ok(SshBackend {
            location: url.to_owned(),
            target,
            argv,
            pool: Mutex::new(Pool::default()),
            freed: Condvar::new(),
        })
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// Sends one request and returns the answer; an error answer becomes the io::Error the
    /// remote store met.
    fn call(&self, request: Request, payload: &[u8]) -> io::Result<(Response, Vec<u8>)> {
        let mut tries = 0;
        loop {
            tries += 1;
            // A retry never takes an idle connection: whatever killed one likely killed all.
            let mut connection = self.take(tries > 1)?;
            match connection.exchange(&request, payload) {
                Ok(answer) => {
                    self.pool().idle.push(connection);
                    self.freed.notify_one();
                    return match answer {
                        (Response::Error(error), _) => Err(error.into_io()),
                        answer => Ok(answer),
                    };
                }
                Err(e) => {
                    let lost = self.close(connection);
                    if tries == 1 && request.is_read_only() {
                        continue;
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("the connection to {} was lost ({e}){}", self.target.host, stderr_note(&lost)),
                    ));
                }
            }
        }
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A connection for one request: an idle one (unless `fresh`), else a new one, else the
    /// first one given back.
    fn take(&self, fresh: bool) -> io::Result<Connection> {
        let mut pool = self.pool();
        loop {
            if !fresh && let Some(connection) = pool.idle.pop() {
                return Ok(connection);
            }
            if pool.open < MAX_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                return self.connect().inspect_err(|_| {
                    self.pool().open -= 1;
                    self.freed.notify_one();
                });
            }
            if fresh && let Some(old) = pool.idle.pop() {
                // Room for the new one.
                drop(pool);
                self.close(old);
                pool = self.pool();
                continue;
            }
            pool = self.freed.wait(pool).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn close(&self, connection: Connection) -> Lost {
        let lost = connection.close();
        self.pool().open -= 1;
        self.freed.notify_one();
        lost
    }

    /// Runs ssh and exchanges hellos.
    fn connect(&self) -> io::Result<Connection> {
        let mut child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            // Not the error's own kind: a missing ssh program is no "file not found" in the store.
            .map_err(|e| io::Error::other(format!("cannot run `{}`: {e}", self.argv[0])))?;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let pipe = child.stderr.take().expect("piped");
        let tail = stderr.clone();
        // Drained continuously, or a chatty remote would block on a full pipe; kept for the
        // error that explains a refused or dropped connection.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                tracing::debug!(remote = %line, "ssh stderr");
                let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if tail.len() == 20 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        let mut connection = Connection {
            stdin: Some(BufWriter::new(child.stdin.take().expect("piped"))),
            stdout: BufReader::new(child.stdout.take().expect("piped")),
            child,
            stderr,
        };
        let hello = Request::Hello {
            magic: MAGIC.into(),
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let command = self.argv.join(" ");
        match connection.exchange(&hello, &[]) {
            Ok((Response::Hello { magic, protocol, version }, _)) if magic == MAGIC => {
                if protocol == PROTOCOL_VERSION {
                    return Ok(connection);
                }
                drop(connection.close());
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "protocol mismatch: this repovault ({}) speaks protocol {PROTOCOL_VERSION}, the remote `repovault serve` ({version}) speaks protocol {protocol}; install the same repovault version on both hosts",
                        env!("CARGO_PKG_VERSION")
                    ),
                ))
            }
            Ok((other, _)) => {
                let lost = connection.close();
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("`{command}` did not answer as `repovault serve` ({other:?}){}", stderr_note(&lost)),
                ))
            }
            Err(e) => {
                let lost = connection.close();
                let kind =
                    if e.kind() == io::ErrorKind::InvalidData { e.kind() } else { io::ErrorKind::ConnectionAborted };
                let status = lost.status.map(|s| format!(" exited ({s})")).unwrap_or_default();
                Err(io::Error::new(
                    kind,
                    format!("cannot connect: `{command}`{status} without a protocol hello ({e}){}", stderr_note(&lost)),
                ))
            }
        }
    }

    fn expect_done(&self, answer: io::Result<(Response, Vec<u8>)>) -> io::Result<()> {
        match answer? {
            (Response::Done, _) => Ok(()),
            (other, _) => Err(unexpected(other)),
        }
    }

    fn expect_bool(&self, answer: io::Result<(Response, Vec<u8>)>) -> io::Result<bool> {
        match answer? {
            (Response::Bool { value }, _) => Ok(value),
            (other, _) => Err(unexpected(other)),
        }
    }

    fn expect_names(&self, answer: io::Result<(Response, Vec<u8>)>) -> io::Result<Vec<String>> {
        match answer? {
            (Response::Names { names }, _) => Ok(names),
            (other, _) => Err(unexpected(other)),
        }
    }
}

fn unexpected(answer: Response) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected answer from `repovault serve`: {answer:?}"))
}

/// What ssh said on stderr, for an error message.
fn stderr_note(lost: &Lost) -> String {
    if lost.stderr.is_empty() { String::new() } else { format!("; ssh said: {}", lost.stderr.join(" / ")) }
}

struct Connection {
    child: Child,
    /// `None` once closed: closing stdin is what tells `serve` to exit.
    stdin: Option<BufWriter<ChildStdin>>,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

/// What is known of a connection after it ended.
struct Lost {
    status: Option<std::process::ExitStatus>,
    stderr: Vec<String>,
}

impl Connection {
    fn exchange(&mut self, request: &Request, payload: &[u8]) -> io::Result<(Response, Vec<u8>)> {
        let stdin = self.stdin.as_mut().ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        protocol::write_frame(stdin, request, payload)?;
        stdin.flush()?;
        protocol::read_frame(&mut self.stdout)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "the remote side closed the connection"))
    }

    /// Ends the connection: stdin closed (a `serve` still there exits), ssh given a moment to
    /// exit, then killed.
    fn close(mut self) -> Lost {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
            }
        };
        // The stderr reader stops when ssh's stderr closes: a little time to catch up.
        std::thread::sleep(Duration::from_millis(20));
        let stderr = self.stderr.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().cloned().collect();
        Lost { status, stderr }
    }
}

impl Drop for SshBackend {
    fn drop(&mut self) {
        let pool = self.pool.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut connections = std::mem::take(&mut pool.idle);
        // Every stdin closed first: the serves then all exit at once, not one after another.
        for connection in &mut connections {
            connection.stdin = None;
        }
        for connection in connections {
            connection.close();
        }
    }
}

impl Backend for SshBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        match self.call(Request::Read { path: path.into() }, &[])? {
            (Response::Data, data) => Ok(data),
            (other, _) => Err(unexpected(other)),
        }
    }

    fn write_new(&self, path: &str, data: &[u8]) -> io::Result<bool> {
        self.expect_bool(self.call(Request::WriteNew { path: path.into() }, data))
    }

    fn exists(&self, path: &str) -> io::Result<bool> {
        self.expect_bool(self.call(Request::Exists { path: path.into() }, &[]))
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.expect_names(self.call(Request::List { dir: dir.into() }, &[]))
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        self.expect_done(self.call(Request::Remove { path: path.into() }, &[]))
    }

    fn create_exclusive(&self, path: &str, data: &[u8]) -> io::Result<bool> {
        self.expect_bool(self.call(Request::CreateExclusive { path: path.into() }, data))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.expect_done(self.call(Request::Rename { from: from.into(), to: to.into() }, &[]))
    }

    fn touch(&self, path: &str) -> io::Result<()> {
        self.expect_done(self.call(Request::Touch { path: path.into() }, &[]))
    }

    fn modified(&self, path: &str) -> io::Result<SystemTime> {
        match self.call(Request::Modified { path: path.into() }, &[])? {
            (Response::Time { secs, nanos }, _) => Ok(protocol::time_of(secs, nanos)),
            (other, _) => Err(unexpected(other)),
        }
    }

    fn size(&self, path: &str) -> io::Result<u64> {
        match self.call(Request::Size { path: path.into() }, &[])? {
            (Response::Size { bytes }, _) => Ok(bytes),
            (other, _) => Err(unexpected(other)),
        }
    }

    fn list_unfinished(&self, dir: &str) -> io::Result<Vec<String>> {
        self.expect_names(self.call(Request::ListUnfinished { dir: dir.into() }, &[]))
    }

    fn remove_dir(&self, dir: &str) -> io::Result<()> {
        self.expect_done(self.call(Request::RemoveDir { dir: dir.into() }, &[]))
    }

    fn create_dir(&self, dir: &str) -> io::Result<()> {
        self.expect_done(self.call(Request::CreateDir { dir: dir.into() }, &[]))
    }

    fn root_state(&self) -> io::Result<RootState> {
        match self.call(Request::RootState, &[])? {
            (Response::Root { state }, _) => Ok(state),
            (other, _) => Err(unexpected(other)),
        }
    }

    fn create_root(&self) -> io::Result<()> {
        self.expect_done(self.call(Request::CreateRoot, &[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_bad_ones_are_refused() {
        let t = parse_url("ssh://backup@store.example:2222/srv/repovault").unwrap();
        assert_eq!(
            t,
            SshTarget {
                user: Some("backup".into()),
                host: "store.example".into(),
                port: Some(2222),
                path: "/srv/repovault".into()
            }
        );
        let t = parse_url("ssh://backup-host/srv/x").unwrap();
        assert_eq!((t.user, t.host.as_str(), t.port), (None, "backup-host", None));
        assert_eq!(parse_url("ssh://[::1]:22/s").unwrap().host, "::1");
        for bad in ["ssh://host", "ssh://host/", "ssh://-oProxyCommand=x/s", "ssh://host:port/s", "ssh:///s"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_remote_path_is_quoted_for_the_shell() {
        assert_eq!(shell_quote("/srv/it's here"), r"'/srv/it'\''s here'");
    }
}

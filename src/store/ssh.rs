//! A store on another host, `ssh://[user@]host[:port]/absolute/path`, reached through the
//! system's OpenSSH client (so `~/.ssh/config`, `known_hosts` and the agent work as they do
//! for git and rsync) running `repovault serve --stdio` there. See [`super::protocol`].
//!
//! Each connection carries one request at a time; threads that ask at the same time (the
//! backups of `run --jobs N`, parallel chunk writes, heartbeats) share a pool of up to
//! [`MAX_CONNECTIONS`], kept open for the next requests: one ssh channel is limited to about
//! its window per round trip, and every request waits for the storage host's fsync, so
//! parallel jobs need parallel channels; the cap stays under sshd's default `MaxStartups`
//! (10). Opening a connection costs a handshake and a remote process start (0.2-0.3 s on
//! loopback, more over a WAN), far more than most requests, so only the first one is waited
//! for: when every open connection is busy, another is opened in the background and the
//! request takes whichever connection is free first. A connection that dies is dropped and
//! the request fails with `ConnectionAborted` (which `run` retries); the next request
//! connects again. Requests that change nothing are sent once more on a new connection
//! before failing, since nothing is lost by asking twice.

use std::{
    collections::VecDeque,
    io::{self, BufRead, BufReader, BufWriter, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard, mpsc},
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
    /// Shared with the threads that open connections in the background.
    shared: Arc<Shared>,
}

struct Shared {
    /// The whole command line: the ssh command, its options, the host and the remote command.
    argv: Vec<String>,
    /// How long a request (the hello included) waits for its answer before its connection
    /// is given up: keepalives catch a dead link, this a storage host that hangs with its
    /// link up.
    timeout: Duration,
    pool: Mutex<Pool>,
    /// Signalled when a connection is opened or fails to open.
    changed: Condvar,
}

/// Connections to the storage host at most, whatever the number of threads asking.
pub const MAX_CONNECTIONS: usize = 4;

/// Requests in flight that make a connection busy enough to open another: `serve` carries
/// out this many at once (src/commands/serve.rs), more only queue there. Below it, another
/// connection would only cost a handshake's CPU, which on a small host slows the transfer.
const BUSY: usize = 4;

#[derive(Default)]
struct Pool {
    /// Open connections (a dead one stays until a request notices).
    live: Vec<Arc<Connection>>,
    /// Connections being opened.
    opening: usize,
    /// The backend was dropped: a connection opened in the background is closed at once.
    closed: bool,
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
            shared: Arc::new(Shared {
                argv,
                timeout: access.request_timeout.unwrap_or(crate::config::DEFAULT_SSH_TIMEOUT),
                pool: Mutex::new(Pool::default()),
                changed: Condvar::new(),
            }),
        })
    }

    /// Starts opening the first connection now, for a caller with other work to do
    /// meanwhile; the first request waits for it. Should it fail, that request opens one
    /// itself and reports why.
    pub fn connect_in_background(&self) {
        let mut pool = self.shared.pool();
        if pool.live.is_empty() && pool.opening == 0 {
            Shared::open_another(&self.shared, &mut pool);
        }
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
            // A retry never takes an open connection: whatever killed one likely killed all.
            let connection = Shared::take(&self.shared, tries > 1)?;
            let started = Instant::now();
            match connection.exchange(&request, payload, self.shared.timeout) {
                Ok(answer) => {
                    tracing::trace!(
                        ?request,
                        bytes = payload.len(),
                        seconds = started.elapsed().as_secs_f64(),
                        "answered"
                    );
                    return match answer {
                        (Response::Error(error), _) => Err(error.into_io()),
                        answer => Ok(answer),
                    };
                }
                Err(e) => {
                    let lost = self.shared.discard(&connection);
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

impl Shared {
    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connection for one request. Without `fresh`: the open one with the fewest
    /// requests in flight (requests are pipelined, so a busy one serves too), and when all
    /// are [`BUSY`] another is opened in the background for the next requests; when none is
    /// open, the first is opened. With `fresh`: a new one, whatever is open.
    fn take(shared: &Arc<Shared>, fresh: bool) -> io::Result<Arc<Connection>> {
        let mut pool = shared.pool();
        loop {
            let dead: Vec<_> = pool.live.iter().filter(|c| c.is_dead()).cloned().collect();
            if !dead.is_empty() {
                pool.live.retain(|c| !c.is_dead());
                drop(pool);
                for connection in dead {
                    connection.close();
                }
                pool = shared.pool();
                continue;
            }
            if !fresh && let Some(least_busy) = pool.live.iter().min_by_key(|c| c.in_flight()).cloned() {
                if least_busy.in_flight() >= BUSY {
                    Shared::open_another(shared, &mut pool);
                }
                return Ok(least_busy);
            }
            if !fresh && pool.opening > 0 {
                // The first connection is on its way: wait for it rather than open another.
                pool = shared.changed.wait(pool).unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            pool.opening += 1;
            drop(pool);
            let opened = shared.connect();
            let mut pool = shared.pool();
            pool.opening -= 1;
            shared.changed.notify_all();
            let connection = Arc::new(opened?);
            pool.live.push(Arc::clone(&connection));
            return Ok(connection);
        }
    }

    /// Starts opening one more connection in the background, unless the pool is full.
    fn open_another(shared: &Arc<Shared>, pool: &mut Pool) {
        if pool.live.len() + pool.opening < MAX_CONNECTIONS && !pool.closed {
            pool.opening += 1;
            let background = Arc::clone(shared);
            std::thread::spawn(move || background.open_in_background());
        }
    }

    /// Opens one more connection for the pool. A failure only leaves the pool as it was:
    /// the requests are served by the connections already open.
    fn open_in_background(&self) {
        let opened = self.connect();
        let mut pool = self.pool();
        pool.opening -= 1;
        self.changed.notify_all();
        match opened {
            Ok(connection) if !pool.closed => pool.live.push(Arc::new(connection)),
            Ok(connection) => {
                drop(pool);
                connection.close();
            }
            Err(e) => tracing::debug!("opening another connection failed: {e}"),
        }
    }

    /// Takes a connection that failed out of the pool and ends it; what is known of why.
    fn discard(&self, connection: &Arc<Connection>) -> Lost {
        self.pool().live.retain(|c| !Arc::ptr_eq(c, connection));
        connection.close()
    }

    /// Runs ssh and exchanges hellos.
    fn connect(&self) -> io::Result<Connection> {
        let started = Instant::now();
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
        let (stderr_done, stderr_closed) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _done = stderr_done;
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
        let stdin = BufWriter::new(child.stdin.take().expect("piped"));
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let connection = Connection::start(child, stdin, stdout, stderr, stderr_closed);
        let hello = Request::Hello {
            magic: MAGIC.into(),
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let answer = connection.exchange(&hello, &[], self.timeout);
        let command = self.argv.join(" ");
        match answer {
            Ok((Response::Hello { magic, protocol, version }, _)) if magic == MAGIC => {
                if protocol == PROTOCOL_VERSION {
                    tracing::debug!(seconds = started.elapsed().as_secs_f64(), "connected");
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
}

fn unexpected(answer: Response) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected answer from `repovault serve`: {answer:?}"))
}

/// `timeout` as people write it in the config: `90s`, `10m`.
fn humantime_secs(timeout: Duration) -> String {
    let secs = timeout.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{}s", timeout.as_secs_f64())
    }
}

/// What ssh said on stderr, for an error message.
fn stderr_note(lost: &Lost) -> String {
    if lost.stderr.is_empty() { String::new() } else { format!("; ssh said: {}", lost.stderr.join(" / ")) }
}

/// One ssh process running `serve`. Requests are pipelined: any number of threads send on
/// it at once, each waiting only for its own answer, so a stream of writes never waits a
/// round trip per object. `serve` answers in order, so answers are matched to requests
/// first in, first out by the thread that reads them.
struct Connection {
    /// The stdin (`None` once closed: closing it is what tells `serve` to exit). Held while
    /// a frame is written and its answer slot queued, so that both orders agree.
    stdin: Mutex<Option<BufWriter<ChildStdin>>>,
    answers: Arc<Answers>,
    child: Mutex<Option<Child>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Disconnected once ssh's stderr is read to its end.
    stderr_closed: Mutex<mpsc::Receiver<()>>,
}

type Answer = io::Result<(Response, Vec<u8>)>;

/// Where the reading thread delivers answers.
#[derive(Default)]
struct Answers {
    state: Mutex<AnswerState>,
}

#[derive(Default)]
struct AnswerState {
    /// One slot per request sent and not yet answered, in sending order.
    slots: VecDeque<mpsc::Sender<Answer>>,
    /// Why the connection is dead, once it is: every later request fails with it.
    failed: Option<(io::ErrorKind, String)>,
}

impl AnswerState {
    /// Marks the connection dead and fails every request still waiting.
    fn fail(&mut self, kind: io::ErrorKind, why: String) {
        if self.failed.is_none() {
            self.failed = Some((kind, why));
        }
        let (kind, why) = self.failed.clone().expect("set above");
        for slot in self.slots.drain(..) {
            let _ = slot.send(Err(io::Error::new(kind, why.clone())));
        }
    }
}

/// What is known of a connection after it ended.
struct Lost {
    status: Option<std::process::ExitStatus>,
    stderr: Vec<String>,
}

impl Connection {
    /// Starts the thread that reads answers from `stdout`.
    fn start(
        child: Child,
        stdin: BufWriter<ChildStdin>,
        mut stdout: BufReader<ChildStdout>,
        stderr: Arc<Mutex<VecDeque<String>>>,
        stderr_closed: mpsc::Receiver<()>,
    ) -> Connection {
        let answers = Arc::new(Answers::default());
        let reader = Arc::clone(&answers);
        std::thread::spawn(move || {
            loop {
                let frame = protocol::read_frame::<Response>(&mut stdout);
                let mut state = reader.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match frame {
                    Ok(Some(answer)) => match state.slots.pop_front() {
                        Some(slot) => {
                            let _ = slot.send(Ok(answer));
                        }
                        None => {
                            state.fail(io::ErrorKind::InvalidData, "an answer to no request".into());
                            return;
                        }
                    },
                    Ok(None) => {
                        state.fail(io::ErrorKind::UnexpectedEof, "the remote side closed the connection".into());
                        return;
                    }
                    Err(e) => {
                        state.fail(e.kind(), e.to_string());
                        return;
                    }
                }
            }
        });
        Connection {
            stdin: Mutex::new(Some(stdin)),
            answers,
            child: Mutex::new(Some(child)),
            stderr,
            stderr_closed: Mutex::new(stderr_closed),
        }
    }

    fn state(&self) -> MutexGuard<'_, AnswerState> {
        self.answers.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_dead(&self) -> bool {
        self.state().failed.is_some()
    }

    /// Requests sent and not answered yet.
    fn in_flight(&self) -> usize {
        self.state().slots.len()
    }

    /// Sends `request` and waits up to `timeout` for its answer; past that the connection is
    /// given up (marked dead, ssh killed) and the request fails as timed out.
    fn exchange(&self, request: &Request, payload: &[u8], timeout: Duration) -> Answer {
        let answer = {
            let mut stdin = self.stdin.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let (slot, answer) = mpsc::channel();
            {
                let mut state = self.state();
                if let Some((kind, why)) = &state.failed {
                    return Err(io::Error::new(*kind, why.clone()));
                }
                state.slots.push_back(slot);
            }
            let sent = match stdin.as_mut() {
                Some(stdin) => protocol::write_frame(stdin, request, payload).and_then(|()| stdin.flush()),
                None => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
            };
            if let Err(e) = sent {
                self.state().fail(e.kind(), e.to_string());
            }
            answer
        };
        match answer.recv_timeout(timeout) {
            Ok(answer) => answer,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection ended"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let why = format!(
                    "no answer from the storage host in {} (ssh_timeout); the connection is given up",
                    humantime_secs(timeout)
                );
                self.state().fail(io::ErrorKind::TimedOut, why.clone());
                if let Some(child) = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_mut() {
                    let _ = child.kill();
                }
                Err(io::Error::new(io::ErrorKind::TimedOut, why))
            }
        }
    }

    /// Ends the connection: stdin closed (a `serve` still there exits), ssh given a moment to
    /// exit, then killed. A second call finds it ended and only reports what ssh said.
    fn close(&self) -> Lost {
        self.stdin.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let child = self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let status = child.and_then(|mut child| {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    // Every command ends by closing its connections: a short poll keeps
                    // that from adding to each command's time.
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                    _ => {
                        let _ = child.kill();
                        break child.wait().ok();
                    }
                }
            }
        });
        // The stderr reader stops when ssh's stderr closes (a ProxyCommand still running may
        // hold it open: not waited for long).
        let _ = self
            .stderr_closed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .recv_timeout(Duration::from_millis(20));
        let stderr = self.stderr.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().cloned().collect();
        Lost { status, stderr }
    }
}

impl Drop for SshBackend {
    fn drop(&mut self) {
        let connections = {
            let mut pool = self.shared.pool();
            pool.closed = true;
            std::mem::take(&mut pool.live)
        };
        // Every stdin closed first: the serves then all exit at once, not one after another.
        for connection in &connections {
            connection.stdin.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
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

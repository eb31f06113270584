//! `repovault serve --stdio --store PATH`: the far end of an ssh:// store. Run by sshd for
//! a client's `SshBackend`; answers its requests (src/store/protocol.rs) on stdin/stdout
//! with a [`LocalBackend`] on PATH, until stdin closes.
//!
//! Whoever holds the key may send anything, so nothing is taken on trust: every path must be
//! a path of the store layout (nothing outside PATH is reachable), and an object is written
//! only when its content hashes to its name (a transfer damaged on the way never becomes an
//! object). Sessions and locks are the client's: when it vanishes its heartbeats stop and a
//! prune revokes them, so a serve whose stdin closes just exits.

use std::{
    io::{self, BufReader, BufWriter, Write},
    path::PathBuf,
    sync::{Mutex, mpsc},
};

use anyhow::{Context as _, Result};
use clap::Args;

use super::{Context, Outcome};
use crate::{
    error::usage,
    output,
    store::{
        Backend, hash_hex,
        local::LocalBackend,
        protocol::{self, MAGIC, PROTOCOL_VERSION, Request, Response, WireError, is_store_path},
    },
};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Speak the protocol on stdin and stdout (the only mode there is).
    #[arg(long, required = true)]
    pub stdio: bool,
    /// The store directory to serve (absolute).
    #[arg(long, value_name = "PATH")]
    pub store: PathBuf,
}

pub fn run(_ctx: &Context, args: &ServeArgs) -> Result<Outcome> {
    let root = &args.store;
    let shown = output::path(root);
    if !root.is_absolute() {
        return Err(usage(format!("serve: the store {shown} is not an absolute path")));
    }
    let backend = LocalBackend::new(root);
    // stdout is the protocol stream, not output for people: it bypasses the output module,
    // and nothing else may write to it while serving.
    let mut input = BufReader::with_capacity(1 << 20, io::stdin().lock());
    let mut out = BufWriter::with_capacity(1 << 20, io::stdout());

    let Some((hello, _)) = protocol::read_frame::<Request>(&mut input)
        .with_context(|| format!("serve {shown}: reading the client's hello"))?
    else {
        return Ok(Outcome::Done);
    };
    let Request::Hello { magic, protocol, version } = hello else {
        return Err(usage(format!("serve {shown}: the client did not begin with a hello")));
    };
    // Answered whatever the client speaks, so that it can name both versions.
    let ours =
        Response::Hello { magic: MAGIC.into(), protocol: PROTOCOL_VERSION, version: env!("CARGO_PKG_VERSION").into() };
    protocol::write_frame(&mut out, &ours, &[]).and_then(|()| out.flush()).context("serve: answering the hello")?;
    if magic != MAGIC || protocol != PROTOCOL_VERSION {
        return Err(usage(format!(
            "serve {shown}: protocol mismatch: the client (repovault {version}) speaks protocol {protocol}, this repovault serve ({}) speaks protocol {PROTOCOL_VERSION}; install the same repovault version on both hosts",
            env!("CARGO_PKG_VERSION")
        )));
    }
    serve_requests(&backend, &mut input, out).with_context(|| format!("serve {shown}"))?;
    Ok(Outcome::Done)
}

/// Requests carried out at once. Requests in flight together were sent by client threads
/// none of which waits for another's answer, so they may run together, as a local store's
/// parallel puts do (each mostly waits for its fsync).
const WORKERS: usize = 4;
/// Answers waiting to be sent, in order, behind a slower one: bounds the memory of read
/// answers (a chunk each) held back.
const ANSWERS_QUEUED: usize = 8;

type Answer = (Response, Vec<u8>);

/// Answers requests until the client closes the connection. They are carried out a few at a
/// time and answered in the order they came, which is how the client matches answers to
/// requests.
fn serve_requests(backend: &LocalBackend, input: &mut impl io::BufRead, out: BufWriter<io::Stdout>) -> Result<()> {
    let (jobs, jobs_to_take) = mpsc::sync_channel::<(Request, Vec<u8>, mpsc::SyncSender<Answer>)>(0);
    let jobs_to_take = Mutex::new(jobs_to_take);
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            let jobs_to_take = &jobs_to_take;
            scope.spawn(move || {
                loop {
                    let job = jobs_to_take.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).recv();
                    let Ok((request, payload, answer)) = job else { return };
                    let _ = answer.send(respond(backend, request, &payload));
                }
            });
        }
        let (in_order, answers) = mpsc::sync_channel::<mpsc::Receiver<Answer>>(ANSWERS_QUEUED);
        let answering = scope.spawn(move || -> io::Result<()> {
            let mut out = out;
            while let Ok(pending) = answers.recv() {
                let Ok((answer, data)) = pending.recv() else { break };
                protocol::write_frame(&mut out, &answer, &data)?;
                out.flush()?;
            }
            Ok(())
        });
        let reading = (|| -> Result<()> {
            loop {
                let frame =
                    protocol::read_frame::<Request>(input).context("reading a request (the client went away?)")?;
                let Some((request, payload)) = frame else {
                    // The client closed the connection (or vanished): nothing of ours is left open.
                    return Ok(());
                };
                let (answer, pending) = mpsc::sync_channel(1);
                if in_order.send(pending).is_err() || jobs.send((request, payload, answer)).is_err() {
                    // The answering thread stopped: its error says why.
                    return Ok(());
                }
            }
        })();
        drop(jobs);
        drop(in_order);
        let answered = answering.join().map_err(|_| anyhow::anyhow!("the answering thread panicked"))?;
        reading?;
        answered.context("answering (the client went away?)")
    })
}

fn refuse(kind: io::ErrorKind, message: String) -> (Response, Vec<u8>) {
    tracing::warn!("serve: {message}");
    (Response::Error(WireError { kind: format!("{kind:?}"), errno: None, message }), Vec::new())
}

/// The answer to one request; every failure is an error answer, never the end of serving.
fn respond(backend: &LocalBackend, request: Request, payload: &[u8]) -> (Response, Vec<u8>) {
    let paths: Vec<&str> = match &request {
        Request::Read { path }
        | Request::WriteNew { path }
        | Request::Exists { path }
        | Request::Remove { path }
        | Request::CreateExclusive { path }
        | Request::Touch { path }
        | Request::Modified { path }
        | Request::Size { path } => vec![path],
        Request::CreateDir { dir } | Request::RemoveDir { dir } => vec![dir],
        Request::Rename { from, to } => vec![from, to],
        // The root itself may be listed, and nothing else may name it.
        Request::List { dir } | Request::ListUnfinished { dir } if dir.is_empty() => vec![],
        Request::List { dir } | Request::ListUnfinished { dir } => vec![dir],
        Request::RootState | Request::CreateRoot | Request::Hello { .. } => vec![],
    };
    if let Some(bad) = paths.into_iter().find(|p| !is_store_path(p)) {
        return refuse(
            io::ErrorKind::PermissionDenied,
            format!("refused a request for {:?}: not a path inside the store", output::escape(bad)),
        );
    }
    let result: io::Result<(Response, Vec<u8>)> = match request {
        Request::Read { path } => backend.read(&path).map(|data| (Response::Data, data)),
        Request::WriteNew { path } => {
            if let Some(why) = object_damage(&path, payload) {
                return refuse(io::ErrorKind::InvalidData, format!("refused to write {path}: {why}"));
            }
            backend.write_new(&path, payload).map(|value| (Response::Bool { value }, Vec::new()))
        }
        Request::Exists { path } => backend.exists(&path).map(|value| (Response::Bool { value }, Vec::new())),
        Request::List { dir } => backend.list(&dir).map(|names| (Response::Names { names }, Vec::new())),
        Request::ListUnfinished { dir } => {
            backend.list_unfinished(&dir).map(|names| (Response::Names { names }, Vec::new()))
        }
        Request::Remove { path } => backend.remove(&path).map(|()| (Response::Done, Vec::new())),
        Request::CreateExclusive { path } => {
            backend.create_exclusive(&path, payload).map(|value| (Response::Bool { value }, Vec::new()))
        }
        Request::Rename { from, to } => backend.rename(&from, &to).map(|()| (Response::Done, Vec::new())),
        Request::Touch { path } => backend.touch(&path).map(|()| (Response::Done, Vec::new())),
        Request::Modified { path } => backend.modified(&path).map(|t| (Response::time(t), Vec::new())),
        Request::Size { path } => backend.size(&path).map(|bytes| (Response::Size { bytes }, Vec::new())),
        Request::CreateDir { dir } => backend.create_dir(&dir).map(|()| (Response::Done, Vec::new())),
        Request::RemoveDir { dir } => backend.remove_dir(&dir).map(|()| (Response::Done, Vec::new())),
        Request::RootState => backend.root_state().map(|state| (Response::Root { state }, Vec::new())),
        Request::CreateRoot => backend.create_root().map(|()| (Response::Done, Vec::new())),
        Request::Hello { .. } => {
            return refuse(io::ErrorKind::InvalidInput, "a second hello on one connection".into());
        }
    };
    result.unwrap_or_else(|e| (Response::error(&e), Vec::new()))
}

/// Why `payload` must not become the file `path`, when `path` is an object
/// (`objects/<2 hex>/<64 hex>`) whose content does not hash to its name; `None` otherwise.
fn object_damage(path: &str, payload: &[u8]) -> Option<String> {
    let mut parts = path.split('/');
    let (Some("objects"), Some(fan), Some(name), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    // Other files under objects/ (packs of format 1 stores) are not named by their hash.
    crate::store::chunk_key(name)?;
    if !name.starts_with(fan) {
        return Some(format!("object {name} does not belong in objects/{fan}/"));
    }
    match crate::store::decode(payload) {
        Ok(data) if hash_hex(&data) == name => None,
        Ok(data) => Some(format!("its content hashes to {}, not to its name (damaged in transfer?)", hash_hex(&data))),
        Err(e) => Some(format!("its content does not decode: {e:#} (damaged in transfer?)")),
    }
}

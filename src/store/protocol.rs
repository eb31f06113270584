//! The protocol between an [`SshBackend`](super::ssh::SshBackend) and `repovault serve
//! --stdio` on the storage host: one request per [`Backend`](super::Backend) method, over
//! the byte stream of the remote process's stdin and stdout.
//!
//! A frame is a JSON header and a binary payload, each length-prefixed (big endian):
//! `u32 header length | header | u64 payload length | payload`. Payloads are file contents,
//! raw: base64 in JSON would cost a third more on every object.
//!
//! The client speaks first with [`Request::Hello`]; the server always answers with
//! [`Response::Hello`] carrying its own version, so that either side can name both versions
//! when they differ. Those two messages must keep their encoding in every future protocol
//! version; everything after them may change with [`PROTOCOL_VERSION`].

use std::{
    io::{self, Read, Write},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

/// Bumped whenever a request or response other than the hello changes meaning or encoding.
pub const PROTOCOL_VERSION: u32 = 1;

/// Says "this is repovault" in the hello, so that a remote command that is something else
/// (a shell banner, another program) is told from a repovault of another version.
pub const MAGIC: &str = "repovault-serve";

/// A header larger than this is not ours (a banner read as a length): refused before
/// allocating.
const MAX_HEADER: u32 = 1 << 20;
/// The largest payload either side accepts: objects are at most one chunk (8 MiB), and
/// manifests and run records far below this.
pub const MAX_PAYLOAD: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Hello {
        magic: String,
        protocol: u32,
        version: String,
    },
    Read {
        path: String,
    },
    /// Payload: the file's content.
    WriteNew {
        path: String,
    },
    Exists {
        path: String,
    },
    List {
        dir: String,
    },
    ListUnfinished {
        dir: String,
    },
    Remove {
        path: String,
    },
    /// Payload: the file's content.
    CreateExclusive {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Touch {
        path: String,
    },
    Modified {
        path: String,
    },
    Size {
        path: String,
    },
    CreateDir {
        dir: String,
    },
    RemoveDir {
        dir: String,
    },
    /// What is at the store's root (for `init`).
    RootState,
    /// Creates the store's root directory and its missing parents (for `init`).
    CreateRoot,
}

impl Request {
    /// Requests that change nothing, and may be sent again on a new connection when the
    /// old one died before answering.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Read { .. }
                | Request::Exists { .. }
                | Request::List { .. }
                | Request::ListUnfinished { .. }
                | Request::Modified { .. }
                | Request::Size { .. }
                | Request::RootState
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "re", rename_all = "snake_case")]
pub enum Response {
    Hello {
        magic: String,
        protocol: u32,
        version: String,
    },
    /// Payload: the file's content.
    Data,
    Bool {
        value: bool,
    },
    Names {
        names: Vec<String>,
    },
    Done,
    Time {
        secs: u64,
        nanos: u32,
    },
    Size {
        bytes: u64,
    },
    Root {
        state: RootState,
    },
    Error(WireError),
}

/// What is at a store's root path, before `init` makes a store there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootState {
    Missing,
    NotADirectory,
    Empty,
    NotEmpty,
}

/// An `io::Error` as it crosses the wire: its kind, its errno when it came from the
/// operating system, and its message. Store code looks at both kind (NotFound) and errno
/// (EROFS and EACCES mean "usage", ESTALE and EIO mean "retry"), so both must survive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub kind: String,
    pub errno: Option<i32>,
    pub message: String,
}

impl From<&io::Error> for WireError {
    fn from(e: &io::Error) -> Self {
        WireError { kind: format!("{:?}", e.kind()), errno: e.raw_os_error(), message: e.to_string() }
    }
}

impl WireError {
    /// The error again. Both hosts are Linux (the store code's errno checks assume it), so
    /// an errno means the same on both sides, and `from_raw_os_error` gives back the same
    /// kind and message as well.
    ///
    /// Except a full disk (ENOSPC, EDQUOT): the operator must make room on the storage host,
    /// and "No space left on device" alone reads as this host's disk (where a restore or
    /// `verify --deep` writes). Its message says whose; its kind stays, its raw errno does
    /// not come back: no store code decides on those two, and `verify` takes a raw ENOSPC for
    /// its own scratch directory filling up, which a remote one is not.
    pub fn into_io(self) -> io::Error {
        match self.errno {
            Some(errno) if is_disk_full(errno) => {
                let local = io::Error::from_raw_os_error(errno);
                io::Error::new(local.kind(), format!("{local} on the storage host"))
            }
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::new(kind_from_name(&self.kind), self.message),
        }
    }
}

fn is_disk_full(errno: i32) -> bool {
    errno == libc::ENOSPC || errno == libc::EDQUOT
}

fn kind_from_name(name: &str) -> io::ErrorKind {
    use io::ErrorKind::*;
    [
        NotFound,
        PermissionDenied,
        AlreadyExists,
        InvalidInput,
        InvalidData,
        TimedOut,
        Interrupted,
        Unsupported,
        UnexpectedEof,
        OutOfMemory,
        ReadOnlyFilesystem,
        StaleNetworkFileHandle,
        StorageFull,
        NotADirectory,
        IsADirectory,
        DirectoryNotEmpty,
        ResourceBusy,
        WouldBlock,
        BrokenPipe,
        ConnectionAborted,
        ConnectionReset,
        WriteZero,
    ]
    .into_iter()
    .find(|kind| format!("{kind:?}") == name)
    .unwrap_or(Other)
}

impl Response {
    pub fn error(e: &io::Error) -> Response {
        Response::Error(WireError::from(e))
    }

    pub fn time(t: SystemTime) -> Response {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        Response::Time { secs: since.as_secs(), nanos: since.subsec_nanos() }
    }
}

/// The time a [`Response::Time`] carries.
pub fn time_of(secs: u64, nanos: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
}

/// Writes one frame; the caller flushes.
pub fn write_frame<T: Serialize>(out: &mut impl Write, header: &T, payload: &[u8]) -> io::Result<()> {
    let header = serde_json::to_vec(header).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    out.write_all(&(header.len() as u32).to_be_bytes())?;
    out.write_all(&header)?;
    out.write_all(&(payload.len() as u64).to_be_bytes())?;
    out.write_all(payload)
}

/// Reads one frame. `Ok(None)` when the stream ends cleanly before a frame starts (the other
/// side closed); a stream that ends inside a frame is `UnexpectedEof`, a frame that is not
/// ours `InvalidData`.
pub fn read_frame<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> io::Result<Option<(T, Vec<u8>)>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match input.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let header_len = u32::from_be_bytes(len);
    if header_len > MAX_HEADER {
        return Err(invalid(format!("a frame header of {header_len} bytes is not a repovault protocol frame")));
    }
    let mut header = vec![0; header_len as usize];
    input.read_exact(&mut header)?;
    let header: T = serde_json::from_slice(&header).map_err(|e| {
        let text = String::from_utf8_lossy(&header);
        let shown: String = text.chars().take(200).collect();
        invalid(format!("a frame header does not parse ({e}): {shown:?}"))
    })?;
    let mut len = [0u8; 8];
    input.read_exact(&mut len)?;
    let payload_len = u64::from_be_bytes(len);
    if payload_len > MAX_PAYLOAD {
        return Err(invalid(format!("a payload of {payload_len} bytes is larger than the {MAX_PAYLOAD} allowed")));
    }
    let mut payload = vec![0; payload_len as usize];
    input.read_exact(&mut payload)?;
    Ok(Some((header, payload)))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Whether `path` is a path the store layout can hold (docs/FORMAT.md, "Layout"): relative,
/// one of the store's top-level names first, at most three components of letters, digits,
/// `.`, `_` and `-`, none empty, `.` or `..`. `serve` refuses anything else, so that a
/// client (or whoever holds its key) reaches nothing outside the store. `""` is the root.
pub fn is_store_path(path: &str) -> bool {
    const TOP: [&str; 8] = ["config", "objects", "snapshots", "locks", "runs", "sessions", "revoked", "trash"];
    if path.is_empty() {
        return true;
    }
    let components: Vec<&str> = path.split('/').collect();
    components.len() <= 3
        && TOP.contains(&components[0])
        && components.iter().all(|c| {
            !c.is_empty()
                && *c != "."
                && *c != ".."
                && c.len() <= 255
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_foreign_bytes_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::WriteNew { path: "objects/ab/cd".into() }, b"\0\x01payload").unwrap();
        write_frame(&mut buf, &Request::RootState, b"").unwrap();
        let mut input = &buf[..];
        let (first, payload): (Request, _) = read_frame(&mut input).unwrap().unwrap();
        assert_eq!(first, Request::WriteNew { path: "objects/ab/cd".into() });
        assert_eq!(payload, b"\0\x01payload");
        let (second, _): (Request, _) = read_frame(&mut input).unwrap().unwrap();
        assert_eq!(second, Request::RootState);
        assert!(read_frame::<Request>(&mut input).unwrap().is_none());

        let mut banner = &b"Welcome to the storage host\n"[..];
        assert_eq!(read_frame::<Request>(&mut banner).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut cut = &buf[..10];
        assert_eq!(read_frame::<Request>(&mut cut).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn errors_keep_kind_and_errno_across_the_wire_and_a_full_disk_says_whose() {
        for errno in [libc::ENOENT, libc::EROFS, libc::EACCES, libc::EPERM, libc::ESTALE, libc::EIO] {
            let original = io::Error::from_raw_os_error(errno);
            let wire: WireError =
                serde_json::from_str(&serde_json::to_string(&WireError::from(&original)).unwrap()).unwrap();
            let back = wire.into_io();
            assert_eq!(back.kind(), original.kind());
            assert_eq!(back.raw_os_error(), Some(errno));
        }
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let original = io::Error::from_raw_os_error(errno);
            let back = WireError::from(&original).into_io();
            assert_eq!(back.kind(), original.kind());
            assert_eq!(back.to_string(), format!("{original} on the storage host"));
        }
        let plain = io::Error::new(io::ErrorKind::InvalidData, "payload does not hash to its name");
        let back = WireError::from(&plain).into_io();
        assert_eq!(back.kind(), io::ErrorKind::InvalidData);
        assert_eq!(back.raw_os_error(), None);
        assert!(back.to_string().contains("does not hash"));
    }

    #[test]
    fn only_store_layout_paths_are_accepted() {
        for good in [
            "",
            "config",
            "objects/ab",
            "objects/ab/abcdef",
            "snapshots/0123/20261130T010203.123456789Z-ff",
            "locks/.tmp-0123456789abcdef",
            "sessions/0123/alive",
        ] {
            assert!(is_store_path(good), "{good}");
        }
        for bad in [
            "/etc/passwd",
            "../x",
            "objects/../../x",
            "objects//ab",
            "objects/ab/",
            "objects/./ab",
            "home/user",
            "objects/a b",
            "objects/ab/cd/ef",
            "objects/a\\b",
            "config\0",
        ] {
            assert!(!is_store_path(bad), "{bad:?}");
        }
    }
}

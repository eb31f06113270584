//! A store on a local filesystem or an NFS mount.
//!
//! Every write is: a temporary file in the same directory as its final name (renames
//! across directories are not atomic everywhere), `fsync`, `rename`, `fsync` of the
//! directory. A rename that reports failure may still have happened on NFS (a
//! retransmitted request after a server restart), so a failed rename is checked by
//! looking at the target before it is reported.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::backend::{Backend, RootState};

/// Prefix of in-flight temporary files; `list` hides them and `prune` may delete old ones.
pub const TEMP_PREFIX: &str = ".tmp-";

pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &str) -> PathBuf {
        debug_assert!(!path.starts_with('/') && !path.split('/').any(|c| c == ".."));
        self.root.join(path)
    }

    /// The sorted names in `dir` that are unfinished writes (`unfinished`) or are not; empty
    /// when `dir` does not exist. Names that are not UTF-8 are never the store's.
    fn names_in(&self, dir: &str, unfinished: bool) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(self.full(dir)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            if let Some(name) = name.to_str()
                && name.starts_with(TEMP_PREFIX) == unfinished
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// `fsync` a directory so that a rename or create inside it is durable. Some filesystems
/// (CIFS, some FUSE) answer EINVAL or ENOTSUP for directories: there is nothing more we
/// can do there, so those answers are accepted, as restic and borg do.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        // EINVAL and EOPNOTSUPP on Linux.
        Err(e) if matches!(e.raw_os_error(), Some(22) | Some(95)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `data` durably to a new temporary file in `dir` and returns its path.
fn write_temp(dir: &Path, data: &[u8]) -> io::Result<PathBuf> {
    let temp = dir.join(format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>()));
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        file.write_all(data)?;
        file.sync_all()
    })();
    match written {
        Ok(()) => Ok(temp),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            Err(e)
        }
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        fs::read(self.full(path))
    }

    fn write_new(&self, path: &str, data: &[u8]) -> io::Result<bool> {
        let target = self.full(path);
        if target.exists() {
            return Ok(false);
        }
        let dir = target.parent().expect("store paths have a parent");
        let temp = write_temp(dir, data)?;
        let result = (|| {
            if let Err(e) = fs::rename(&temp, &target) {
                // On NFS the rename may have happened even though it reported failure.
                match fs::metadata(&target) {
                    Ok(meta) if meta.len() == data.len() as u64 => {}
                    _ => return Err(e),
                }
            }
            sync_dir(dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result.map(|()| true)
    }

    fn exists(&self, path: &str) -> io::Result<bool> {
        match fs::symlink_metadata(self.full(path)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.names_in(dir, false)
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let full = self.full(path);
        match fs::remove_file(&full) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        // Without this a crash could bring a forgotten snapshot back.
        sync_dir(full.parent().expect("store paths have a parent"))
    }

    fn create_exclusive(&self, path: &str, data: &[u8]) -> io::Result<bool> {
        let target = self.full(path);
        let dir = target.parent().expect("store paths have a parent");
        let unique = write_temp(dir, data)?;
        // link(2) is atomic on NFS where O_EXCL may not be; a link that reports failure may
        // still have happened, which the link count tells.
        let linked = match fs::hard_link(&unique, &target) {
            Ok(()) => true,
            Err(_) => {
                use std::os::unix::fs::MetadataExt;
                fs::metadata(&unique).map(|m| m.nlink() == 2).unwrap_or(false)
            }
        };
        fs::remove_file(&unique)?;
        sync_dir(dir)?;
        Ok(linked)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.full(from), self.full(to))?;
        sync_dir(self.full(to).parent().expect("store paths have a parent"))
    }

    fn touch(&self, path: &str) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let full = std::ffi::CString::new(self.full(path).as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // Null times mean "now" as the file system sees it: an NFS client then asks the
        // server to use its own clock (SET_TO_SERVER_TIME), where an explicit time would
        // carry this host's clock into the store.
        // SAFETY: `full` is a valid NUL-terminated path; a null `times` is allowed.
        if unsafe { libc::utimensat(libc::AT_FDCWD, full.as_ptr(), std::ptr::null(), 0) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn modified(&self, path: &str) -> io::Result<std::time::SystemTime> {
        fs::metadata(self.full(path))?.modified()
    }

    fn size(&self, path: &str) -> io::Result<u64> {
        Ok(fs::symlink_metadata(self.full(path))?.len())
    }

    fn list_unfinished(&self, dir: &str) -> io::Result<Vec<String>> {
        self.names_in(dir, true)
    }

    fn remove_dir(&self, dir: &str) -> io::Result<()> {
        let full = self.full(dir);
        match fs::remove_dir(&full) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        sync_dir(full.parent().expect("store paths have a parent"))
    }

    fn create_dir(&self, dir: &str) -> io::Result<()> {
        let full = self.full(dir);
        if full.is_dir() {
            return Ok(());
        }
        // Only the last component: if the store itself went away (an NFS mount that
        // dropped), re-creating its skeleton here would let a backup write where the store
        // used to be. A missing parent is an error instead.
        match fs::create_dir(&full) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && full.is_dir() => return Ok(()),
            Err(e) => return Err(e),
        }
        sync_dir(&full)?;
        if let Some(parent) = full.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    fn root_state(&self) -> io::Result<RootState> {
        match fs::metadata(&self.root) {
            Ok(meta) if !meta.is_dir() => Ok(RootState::NotADirectory),
            Ok(_) => {
                Ok(if fs::read_dir(&self.root)?.next().is_some() { RootState::NotEmpty } else { RootState::Empty })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RootState::Missing),
            Err(e) => Err(e),
        }
    }

    fn create_root(&self) -> io::Result<()> {
        fs::create_dir_all(&self.root)
    }
}

//! Keeping a backup's resident memory flat whatever the repository's size.
//!
//! gix reads a source's packs through memory maps, and every page of them a traversal
//! touches stays resident (and counts as the process's RSS) until the map goes away: on a
//! 350 MB pack, counting alone leaves hundreds of MB resident. git bounds this with
//! `core.packedGitLimit` (it unmaps windows); gix has no such limit. [`PackMapTrimmer`]
//! gives one from the outside: while it lives, a thread watches the process's file-backed
//! RSS and, above a limit, tells the kernel it does not need the pages of the mapped pack
//! files (`madvise(MADV_DONTNEED)`). For a read-only file mapping that only drops the page
//! table entries: the data stays in the page cache and a later access faults it back in.

use std::{
    path::Path,
    sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel},
    thread::JoinHandle,
    time::Duration,
};

/// Resident memory of this process, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rss {
    /// Heap and other anonymous memory.
    pub anon: u64,
    /// Pages of mapped files.
    pub file: u64,
}

/// This process's resident memory, from `/proc/self/status` (None where there is no procfs).
pub fn rss() -> Option<Rss> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some(Rss { anon: field("RssAnon:")?, file: field("RssFile:")? })
}

/// Returns heap memory that was freed but kept by the allocator (glibc keeps what worker
/// threads freed in their arenas) to the system, so that the next phase starts low.
pub fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops resident pages of one repository's mapped pack files while it lives; see the
/// module docs.
///
/// Only use it while a gix handle that prevents pack unloading
/// (`prevent_pack_unload`) holds the repository's packs mapped, and drop it before that
/// handle: the pages are dropped by address, so a mapping must not go away and another
/// take its place while the trimmer runs.
pub struct PackMapTrimmer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// How often the trimmer looks at the RSS. Counting touches at most a few hundred MB a
/// second, so this bounds the overshoot to a few MB.
const TRIM_INTERVAL: Duration = Duration::from_millis(10);

impl PackMapTrimmer {
    /// Keeps the process's file-backed RSS near `file_limit` bytes by dropping the pages of
    /// read-only mappings of files in `pack_dir` (canonical: the kernel lists real paths).
    pub fn start(pack_dir: &Path, file_limit: u64) -> Self {
        let (stop, stopped) = channel();
        let pack_dir = pack_dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("pack-map-trimmer".into())
            .spawn(move || trim_until_stopped(&stopped, &pack_dir, file_limit))
            .ok();
        Self { stop: Some(stop), thread }
    }
}

impl Drop for PackMapTrimmer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn trim_until_stopped(stopped: &Receiver<()>, pack_dir: &Path, file_limit: u64) {
    loop {
        match stopped.recv_timeout(TRIM_INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if rss().is_some_and(|r| r.file > file_limit) {
            let dropped = drop_mapped_pages(pack_dir);
            tracing::trace!(bytes = dropped, "dropped resident pages of mapped pack files");
        }
    }
}

/// Advises the kernel that the pages of read-only mappings of files in `dir` are not needed;
/// returns the bytes of mappings advised.
fn drop_mapped_pages(dir: &Path) -> u64 {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let mut advised = 0;
    for line in maps.lines() {
        // "start-end perms offset dev inode         path"; the path may hold spaces.
        let mut fields = line.splitn(6, ' ');
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        let Some(path) = fields.nth(3).map(str::trim_start) else { continue };
        if !Path::new(path).starts_with(dir) || !perms.starts_with("r-") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        // SAFETY: the range is a whole read-only (not writable, so never written) mapping of a
        // file in the repository's pack directory, as the kernel lists it, and `start`'s
        // contract keeps it mapped while we run. MADV_DONTNEED on such a mapping never
        // changes what a read of it returns: the pages come back from the file (page cache).
        let result = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if result == 0 {
            advised += (end - start) as u64;
        }
    }
    advised
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapped file's resident pages are dropped, and reading the mapping afterwards still
    /// returns the file's bytes.
    #[test]
    fn trimming_drops_mapped_pages_and_keeps_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let dir_path = dir.path().canonicalize().unwrap();
        let path = dir_path.join("big.pack");
        let content: Vec<u8> = (0..32u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the file is ours and nobody writes it while it is mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let touched: u64 = map.iter().step_by(4096).map(|&b| u64::from(b)).sum();
        let before = rss().unwrap().file;
        let advised = drop_mapped_pages(&dir_path);
        let after = rss().unwrap().file;
        assert_eq!(advised, map.len() as u64, "the whole mapping is advised");
        assert!(before.saturating_sub(after) >= 24 << 20, "file RSS fell from {before} to {after} only");
        let again: u64 = map.iter().step_by(4096).map(|&b| u64::from(b)).sum();
        assert_eq!(touched, again);
        assert!(map[..] == content[..], "the mapping reads the file's bytes after trimming");
    }
}

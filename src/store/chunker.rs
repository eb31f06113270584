//! Streams of bytes (pack data, pack indexes) are cut into content-defined chunks and
//! stored as objects, so memory stays flat whatever the stream's size and a stream that is
//! sent again (a killed backup re-run) finds most of its chunks already stored.

use std::{
    io::{self, Read, Write},
    sync::mpsc,
};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{ChunkParams, ObjectId, Store, hash_hex, object_path};

/// A stored stream: its chunks in order, and its total length.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkList {
    pub size: u64,
    pub chunks: Vec<ObjectId>,
}

/// Writes a stream into the store chunk by chunk.
pub struct ChunkedWriter<'a> {
    store: &'a Store,
    params: ChunkParams,
    buf: Vec<u8>,
    list: ChunkList,
    stored_bytes: u64,
}

impl<'a> ChunkedWriter<'a> {
    pub fn new(store: &'a Store) -> Self {
        let params = store.config().chunking.clone();
        ChunkedWriter { store, params, buf: Vec::new(), list: ChunkList::default(), stored_bytes: 0 }
    }

    /// Cuts and stores chunks. Unless `last`, the tail after the final cut point is kept:
    /// a cut only counts once the data after it is known.
    fn flush_chunks(&mut self, last: bool) -> Result<()> {
        let ChunkParams { min_size, avg_size, max_size, .. } = &self.params;
        let (min_size, avg_size, max_size) = (*min_size, *avg_size, *max_size);
        let mut consumed = 0;
        let mut chunks = Vec::new();
        for cut in fastcdc::v2020::FastCDC::new(&self.buf, min_size as usize, avg_size as usize, max_size as usize) {
            if !last && cut.offset + cut.length == self.buf.len() {
                break;
            }
            chunks.push(&self.buf[cut.offset..cut.offset + cut.length]);
            consumed = cut.offset + cut.length;
        }
        for (id, stored) in store_all(self.store, &chunks)? {
            self.stored_bytes += stored;
            self.list.chunks.push(id);
        }
        self.buf.drain(..consumed);
        Ok(())
    }

    /// Stores what is left and returns the stream's chunk list and the bytes newly stored.
    pub fn finish(mut self) -> Result<(ChunkList, u64)> {
        if !self.buf.is_empty() {
            self.flush_chunks(true)?;
        }
        Ok((self.list, self.stored_bytes))
    }
}

/// Chunks stored at once. Each store is a write and two fsyncs (the file, its directory)
/// that mostly wait on the disk or the NFS server; overlapping a few of them is what makes
/// a large stream go at the disk's speed rather than at its flush latency.
const PARALLEL_PUTS: usize = 4;

/// Hashes and stores `chunks`, a few at a time; returns each one's id and the bytes it
/// newly took, in order.
fn store_all(store: &Store, chunks: &[&[u8]]) -> Result<Vec<(ObjectId, u64)>> {
    let store_one = |chunk: &&[u8]| -> Result<(ObjectId, u64)> {
        let id = hash_hex(chunk);
        let stored = store.put_object(&id, chunk)?.stored_bytes;
        Ok((id, stored))
    };
    if chunks.len() <= 1 {
        return chunks.iter().map(store_one).collect();
    }
    std::thread::scope(|scope| {
        let workers: Vec<_> = chunks
            .chunks(chunks.len().div_ceil(PARALLEL_PUTS))
            .map(|part| scope.spawn(move || part.iter().map(store_one).collect::<Result<Vec<_>>>()))
            .collect();
        // Every worker is joined before an error is returned: one left running would be
        // joined by the scope, which turns a panic in it into ours.
        let results: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        let mut stored = Vec::with_capacity(chunks.len());
        for result in results {
            stored.extend(result.map_err(|_| anyhow::anyhow!("chunk store thread panicked"))??);
        }
        Ok(stored)
    })
}

impl Write for ChunkedWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.list.size += data.len() as u64;
        if self.buf.len() >= 2 * self.params.max_size as usize {
            self.flush_chunks(false).map_err(io::Error::other)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Chunks being fetched at once ahead of the reader: each is a read and a decompression
/// (over ssh, a round trip and the transfer), so two in flight hide a round trip and keep
/// the decoding on both cores. More measured no faster on loopback (restore is bound by
/// what it does with the data), and each fetcher holds up to two chunks: as many in memory
/// as the single fetcher two chunks ahead that this replaced.
const FETCHERS: usize = 2;

/// Reads a stored stream back, verified chunk by verified chunk, [`FETCHERS`] chunks being
/// fetched ahead of the reader.
pub struct ChunkReader<'a> {
    store: &'a Store,
    chunks: std::slice::Iter<'a, ObjectId>,
    /// One channel per fetcher; chunk `i` comes from fetcher `i % FETCHERS`, so reading them
    /// in turn gives the chunks in order. A chunk is `None` where the fetch failed, for the
    /// reader to read it itself (through `get_object`, which looks in trash batches too and
    /// says what is wrong).
    ahead: Vec<mpsc::Receiver<Option<Vec<u8>>>>,
    next: usize,
    current: Vec<u8>,
    pos: usize,
}

impl<'a> ChunkReader<'a> {
    pub fn new(store: &'a Store, list: &'a ChunkList) -> Self {
        let mut ahead = Vec::new();
        if list.chunks.len() > 1 {
            for first in 0..FETCHERS.min(list.chunks.len()) {
                let (fetched, receiver) = mpsc::sync_channel(1);
                let backend = store.backend.clone();
                let ids: Vec<ObjectId> = list.chunks.iter().skip(first).step_by(FETCHERS).cloned().collect();
                std::thread::spawn(move || {
                    for id in ids {
                        let data = backend
                            .read(&object_path(&id))
                            .ok()
                            .and_then(|raw| super::verified_content(&id, &raw).ok());
                        // The reader was dropped (done, or failed): nothing more to fetch.
                        if fetched.send(data).is_err() {
                            return;
                        }
                    }
                });
                ahead.push(receiver);
            }
        }
        ChunkReader { store, chunks: list.chunks.iter(), ahead, next: 0, current: Vec::new(), pos: 0 }
    }
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            let Some(id) = self.chunks.next() else { return Ok(0) };
            let fetched = match self.ahead.get(self.next % FETCHERS) {
                Some(ahead) => ahead.recv().ok().flatten(),
                None => None,
            };
            self.next += 1;
            self.current = match fetched {
                Some(data) => data,
                None => self.store.get_object(id).map_err(io::Error::other)?,
            };
            self.pos = 0;
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks are fetched ahead from `objects/`; one a prune set aside in a trash batch is
    /// not there, and the reader then finds it itself, in order, the stream unchanged.
    #[test]
    fn a_stream_reads_back_whole_with_a_chunk_in_a_trash_batch() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("store").to_string_lossy().into_owned();
        Store::init(&location).unwrap();
        let store = Store::open(&location).unwrap();
        let parts: Vec<Vec<u8>> =
            (0..5u32).map(|i| format!("chunk {i} ").repeat(1000 + i as usize).into_bytes()).collect();
        let list = ChunkList {
            size: parts.iter().map(|p| p.len() as u64).sum(),
            chunks: parts.iter().map(|p| store_all(&store, &[p]).unwrap()[0].0.clone()).collect(),
        };
        let moved = &list.chunks[2];
        let trash = dir.path().join(format!("store/{}", crate::store::gc::trash_path("batch", "")));
        std::fs::create_dir_all(&trash).unwrap();
        std::fs::rename(dir.path().join(format!("store/{}", object_path(moved))), trash.join(moved)).unwrap();

        let mut read = Vec::new();
        ChunkReader::new(&store, &list).read_to_end(&mut read).unwrap();
        assert_eq!(read, parts.concat());
    }
}

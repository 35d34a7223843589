//! In-memory cache of served file contents, keyed by (path, length, mtime) and bounded in
//! bytes, so a hot boot file (iPXE binary, kernel) fetched by a whole rack at once is read
//! from disk once rather than per transfer or per block.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;

#[derive(Debug)]
struct Entry {
    len: u64,
    modified: Option<SystemTime>,
    data: Bytes,
    used_at: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<PathBuf, Entry>,
    used: u64,
    tick: u64,
}

/// A byte-bounded, least-recently-used cache of whole files.
#[derive(Debug)]
pub struct FileCache {
    limit: u64,
    state: Mutex<State>,
    /// Held while a file is read into the cache, so N simultaneous misses on the same file
    /// (a rack powering on together) cost one disk read, not N.
    loading: Mutex<()>,
}

impl FileCache {
    /// A cache holding at most `limit` bytes (0: nothing is cached).
    pub fn new(limit: u64) -> FileCache {
        FileCache {
            limit,
            state: Mutex::new(State::default()),
            loading: Mutex::new(()),
        }
    }

    /// Whether a file of `len` bytes would be kept.
    pub fn admits(&self, len: u64) -> bool {
        len > 0 && len <= self.limit
    }

    fn lookup(&self, path: &Path, len: u64, modified: Option<SystemTime>) -> Option<Bytes> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.tick += 1;
        let tick = st.tick;
        let e = st.entries.get_mut(path)?;
        if e.len == len && e.modified == modified {
            e.used_at = tick;
            Some(e.data.clone())
        } else {
            None
        }
    }

    /// The contents of `file` (opened from `path`, `len` bytes, modified at `modified`), from
    /// the cache or read now and kept. Returns whether it was a hit. Blocking.
    pub fn get_or_load(
        &self,
        path: &Path,
        file: &mut File,
        len: u64,
        modified: Option<SystemTime>,
    ) -> io::Result<(Bytes, bool)> {
        if let Some(b) = self.lookup(path, len, modified) {
            return Ok((b, true));
        }
        let _loading = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = self.lookup(path, len, modified) {
            return Ok((b, true));
        }
        let data = read_exact_len(file, len)?;
        if self.admits(len) {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(old) = st.entries.remove(path) {
                st.used -= old.len;
            }
            while st.used + len > self.limit {
                let victim = st
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.used_at)
                    .map(|(p, _)| p.clone());
                let Some(victim) = victim else { break };
                if let Some(old) = st.entries.remove(&victim) {
                    st.used -= old.len;
                }
            }
            st.tick += 1;
            let used_at = st.tick;
            st.used += len;
            st.entries.insert(
                path.to_path_buf(),
                Entry {
                    len,
                    modified,
                    data: data.clone(),
                    used_at,
                },
            );
        }
        Ok((data, false))
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .used
    }
}

/// Reads exactly `len` bytes of `file`; a file that changed length meanwhile is an error
/// (the length was already promised in `tsize`).
pub fn read_exact_len(file: &mut File, len: u64) -> io::Result<Bytes> {
    let cap = usize::try_from(len).map_err(|_| io::Error::other("file too large"))?;
    let mut data = Vec::with_capacity(cap);
    file.take(len.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() != cap {
        return Err(io::Error::other("file changed size while being read"));
    }
    Ok(Bytes::from(data))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, File, u64, Option<SystemTime>) {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let f = File::open(&p).unwrap();
        let m = f.metadata().unwrap();
        (p, f, m.len(), m.modified().ok())
    }

    #[test]
    fn hits_evicts_and_revalidates() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(10);
        let (pa, mut fa, la, ma) = write(dir.path(), "a", b"123456");
        let (b, hit) = cache.get_or_load(&pa, &mut fa, la, ma).unwrap();
        assert_eq!((&b[..], hit), (&b"123456"[..], false));
        let mut fa = File::open(&pa).unwrap();
        assert!(cache.get_or_load(&pa, &mut fa, la, ma).unwrap().1);
        // A second file does not fit next to the first: the least recently used goes.
        let (pb, mut fb, lb, mb) = write(dir.path(), "b", b"abcdef");
        assert!(!cache.get_or_load(&pb, &mut fb, lb, mb).unwrap().1);
        assert_eq!(cache.used(), 6);
        let mut fa = File::open(&pa).unwrap();
        assert!(!cache.get_or_load(&pa, &mut fa, la, ma).unwrap().1);
        // A changed length is a different key.
        let (pa, mut fa, la, ma) = write(dir.path(), "a", b"1234567");
        let (b, hit) = cache.get_or_load(&pa, &mut fa, la, ma).unwrap();
        assert_eq!((&b[..], hit), (&b"1234567"[..], false));
        // Too large to keep: served, not cached.
        let (pc, mut fc, lc, mc) = write(dir.path(), "c", &[7; 11]);
        assert_eq!(cache.get_or_load(&pc, &mut fc, lc, mc).unwrap().0.len(), 11);
        assert!(cache.used() <= 10);
    }
}

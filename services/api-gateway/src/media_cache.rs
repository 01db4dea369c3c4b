//! A size-capped on-disk cache of downloaded WhatsApp media, so a second
//! `GET /api/media/:mediaId` does not download again.
//!
//! One file per entry, named after the hex-encoded media id (so no id can
//! name a path outside the directory), holding a small header (format,
//! length, content type) and the bytes. Entries are written to a temporary
//! file and renamed, so a crash never leaves a half-written file under an
//! entry's name. Sizes and recency are kept in memory; at start the
//! directory is scanned (recency from the files' modification times, which
//! reads refresh), so the cap holds across restarts. When the total passes
//! the cap, the least recently used entries go.
//!
//! The cache is an optimisation: its errors are logged and otherwise
//! ignored.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use axum::body::Bytes;

/// Media ids longer than this are not cached (the file name would be too
/// long); Meta's are about 16 digits.
const MAX_ID_BYTES: usize = 120;
const ENTRY_SUFFIX: &str = ".media";
const TEMP_SUFFIX: &str = ".tmp";
const MAGIC: &str = "WAMC1";
const FALLBACK_TYPE: &str = "application/octet-stream";

/// The cache; clones share it.
#[derive(Clone)]
pub struct MediaCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    temp_counter: AtomicU64,
}

#[derive(Default)]
struct Index {
    /// File name → entry.
    entries: HashMap<String, Entry>,
    /// Recency: tick → file name, oldest first.
    order: BTreeMap<u64, String>,
    /// Sum of the entries' file sizes.
    total: u64,
    /// Hands out recency ticks and entry serials, increasing.
    clock: u64,
}

struct Entry {
    size: u64,
    tick: u64,
    /// Which write of this name: a failed read only drops the entry it read.
    serial: u64,
}

impl Index {
    fn next(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Adds (or replaces) an entry as the most recently used.
    fn insert(&mut self, name: String, size: u64) -> u64 {
        self.remove(&name, None);
        let tick = self.next();
        self.order.insert(tick, name.clone());
        self.total += size;
        self.entries.insert(
            name,
            Entry {
                size,
                tick,
                serial: tick,
            },
        );
        tick
    }

    /// Removes the entry, if it is still the write `serial` (any, for `None`).
    fn remove(&mut self, name: &str, serial: Option<u64>) -> bool {
        match self.entries.get(name) {
            Some(entry) if serial.is_none_or(|s| s == entry.serial) => {}
            _ => return false,
        }
        if let Some(entry) = self.entries.remove(name) {
            self.order.remove(&entry.tick);
            self.total -= entry.size;
        }
        true
    }

    fn touch(&mut self, name: &str) {
        let tick = self.next();
        if let Some(entry) = self.entries.get_mut(name) {
            self.order.remove(&entry.tick);
            entry.tick = tick;
            self.order.insert(tick, name.to_owned());
        }
    }

    /// Drops least recently used entries until the total is at most
    /// `max_bytes`; returns their file names.
    fn evict(&mut self, max_bytes: u64) -> Vec<String> {
        let mut victims = Vec::new();
        while self.total > max_bytes {
            let Some((_, name)) = self.order.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&name) {
                self.total -= entry.size;
            }
            victims.push(name);
        }
        victims
    }
}

impl MediaCache {
    /// `dir` is created if missing; entries already there are counted (so
    /// the cap holds across restarts), leftover temporary files removed.
    pub fn open(dir: PathBuf, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let mut found = Vec::new();
        for item in fs::read_dir(&dir)? {
            let item = item?;
            let Ok(name) = item.file_name().into_string() else {
                continue;
            };
            if name.ends_with(TEMP_SUFFIX) {
                if let Err(e) = fs::remove_file(item.path()) {
                    tracing::warn!(file = %item.path().display(), error = %e, "media cache: cannot remove a temporary file");
                }
                continue;
            }
            if !is_entry_name(&name) {
                continue;
            }
            let metadata = item.metadata()?;
            if !metadata.is_file() {
                continue;
            }
            let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((modified, name, metadata.len()));
        }
        found.sort();
        let mut index = Index::default();
        for (_, name, size) in found {
            index.insert(name, size);
        }
        let victims = index.evict(max_bytes);
        let inner = Inner {
            dir,
            max_bytes,
            index: Mutex::new(index),
            temp_counter: AtomicU64::new(0),
        };
        inner.delete(&victims);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The cached bytes and content type, if present (touches the entry so
    /// it is evicted last).
    pub async fn get(&self, media_id: &str) -> Option<(Bytes, String)> {
        let name = entry_name(media_id)?;
        let serial = self.inner.lock().entries.get(&name)?.serial;
        let path = self.inner.dir.join(&name);
        let read = tokio::task::spawn_blocking(move || read_entry(&path)).await;
        let failure = match read {
            Ok(Ok(Some(entry))) => {
                self.inner.lock().touch(&name);
                return Some(entry);
            }
            Ok(Ok(None)) => "the file is damaged".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(media_id, error = %failure, "media cache: dropping an unreadable entry");
        let mut index = self.inner.lock();
        if index.remove(&name, Some(serial)) {
            remove_quietly(&self.inner.dir.join(&name));
        }
        None
    }

    /// Stores an entry (written to a temporary file, then renamed), then
    /// evicts least recently used entries until the total is at most the
    /// cap. An entry larger than the cap is not kept. Errors are logged and
    /// ignored.
    pub async fn put(&self, media_id: &str, bytes: &[u8], mime_type: &str) {
        let Some(name) = entry_name(media_id) else {
            tracing::debug!(media_id, "media cache: id too long to cache");
            return;
        };
        let data = encode(bytes, mime_type);
        if data.len() as u64 > self.inner.max_bytes {
            tracing::debug!(
                media_id,
                size = data.len(),
                "media cache: larger than the whole cache, not kept"
            );
            let mut index = self.inner.lock();
            if index.remove(&name, None) {
                remove_quietly(&self.inner.dir.join(&name));
            }
            return;
        }
        let inner = self.inner.clone();
        let stored = tokio::task::spawn_blocking(move || inner.store(name, &data)).await;
        let error = match stored {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(media_id, error = %error, "media cache: cannot store an entry");
    }

    #[cfg(test)]
    fn total(&self) -> u64 {
        self.inner.lock().total
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `data` as entry `name`, then evicts down to the cap.
    fn store(&self, name: String, data: &[u8]) -> io::Result<()> {
        let serial = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .dir
            .join(format!("{}-{serial}{TEMP_SUFFIX}", std::process::id()));
        let written = File::create(&temp).and_then(|mut file| {
            file.write_all(data)?;
            file.sync_data()
        });
        if let Err(e) = written {
            remove_quietly(&temp);
            return Err(e);
        }
        let mut index = self.lock();
        // Renamed under the lock, so the index describes the file that won.
        if let Err(e) = fs::rename(&temp, self.dir.join(&name)) {
            drop(index);
            remove_quietly(&temp);
            return Err(e);
        }
        index.insert(name, data.len() as u64);
        let victims = index.evict(self.max_bytes);
        self.delete(&victims);
        Ok(())
    }

    fn delete(&self, names: &[String]) {
        for name in names {
            remove_quietly(&self.dir.join(name));
        }
    }
}

fn remove_quietly(path: &Path) {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(file = %path.display(), error = %e, "media cache: cannot remove a file");
        }
        _ => {}
    }
}

/// The entry's file name: the id hex-encoded, so any id is a plain name.
fn entry_name(media_id: &str) -> Option<String> {
    if media_id.is_empty() || media_id.len() > MAX_ID_BYTES {
        return None;
    }
    let mut name = String::with_capacity(media_id.len() * 2 + ENTRY_SUFFIX.len());
    for byte in media_id.bytes() {
        name.push(char::from(HEX[usize::from(byte >> 4)]));
        name.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    name.push_str(ENTRY_SUFFIX);
    Some(name)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn is_entry_name(name: &str) -> bool {
    name.strip_suffix(ENTRY_SUFFIX).is_some_and(|hex| {
        !hex.is_empty()
            && hex.len() % 2 == 0
            && hex.len() <= MAX_ID_BYTES * 2
            && hex.bytes().all(|b| HEX.contains(&b))
    })
}

/// `WAMC1 <length>\n<content type>\n<bytes>`.
fn encode(bytes: &[u8], mime_type: &str) -> Vec<u8> {
    let mime_type = if is_header_safe(mime_type) {
        mime_type
    } else {
        FALLBACK_TYPE
    };
    let header = format!("{MAGIC} {}\n{mime_type}\n", bytes.len());
    let mut data = Vec::with_capacity(header.len() + bytes.len());
    data.extend_from_slice(header.as_bytes());
    data.extend_from_slice(bytes);
    data
}

/// Fit for a `Content-Type` header: visible ASCII and spaces, not too long.
fn is_header_safe(mime_type: &str) -> bool {
    !mime_type.is_empty()
        && mime_type.len() <= 255
        && mime_type.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

/// `None` when the file is not a whole entry.
fn decode(mut data: Vec<u8>) -> Option<(Bytes, String)> {
    let first = data.iter().position(|&b| b == b'\n')?;
    let second = first + 1 + data[first + 1..].iter().position(|&b| b == b'\n')?;
    let length: usize = std::str::from_utf8(&data[..first])
        .ok()?
        .strip_prefix(MAGIC)?
        .strip_prefix(' ')?
        .parse()
        .ok()?;
    let mime_type = std::str::from_utf8(&data[first + 1..second]).ok()?;
    if !is_header_safe(mime_type) || data.len() - (second + 1) != length {
        return None;
    }
    let mime_type = mime_type.to_owned();
    let bytes = Bytes::from(data.split_off(second + 1));
    Some((bytes, mime_type))
}

/// Reads an entry and marks it used on disk too (its modification time
/// orders entries at the next start).
fn read_entry(path: &Path) -> io::Result<Option<(Bytes, String)>> {
    let mut file = File::open(path)?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    // Best effort: only the order after a restart depends on it.
    let _ = file.set_modified(SystemTime::now());
    Ok(decode(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    fn temp_dir(name: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!(
            "media-cache-{name}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Bytes the files in `dir` take, and how many there are.
    fn on_disk(dir: &Path) -> (u64, usize) {
        let mut total = 0;
        let mut count = 0;
        for item in fs::read_dir(dir).unwrap() {
            total += item.unwrap().metadata().unwrap().len();
            count += 1;
        }
        (total, count)
    }

    /// An entry of `len` payload bytes takes this much.
    fn entry_size(len: usize, mime_type: &str) -> u64 {
        encode(&vec![0; len], mime_type).len() as u64
    }

    #[tokio::test]
    async fn get_after_put_returns_the_bytes_and_type() {
        let dir = temp_dir("roundtrip");
        let cache = MediaCache::open(dir.clone(), 1 << 20).unwrap();
        assert!(cache.get("1234").await.is_none());
        cache
            .put("1234", b"\xff\xd8 jpeg\n\nbytes", "image/jpeg")
            .await;
        let (bytes, mime_type) = cache.get("1234").await.unwrap();
        assert_eq!(&bytes[..], b"\xff\xd8 jpeg\n\nbytes");
        assert_eq!(mime_type, "image/jpeg");
        // Replaced, counted once; empty bytes and odd types are fine.
        cache.put("1234", b"", "audio/ogg; codecs=opus").await;
        assert_eq!(
            cache.get("1234").await.unwrap(),
            (Bytes::new(), "audio/ogg; codecs=opus".to_owned())
        );
        cache.put("5678", b"x", "bad\r\ntype").await;
        assert_eq!(cache.get("5678").await.unwrap().1, FALLBACK_TYPE);
        assert_eq!(cache.total(), on_disk(&dir).0);
        assert_eq!(on_disk(&dir).1, 2, "no temporary files left");
        fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn least_recently_used_entries_are_evicted_to_stay_under_the_cap() {
        let dir = temp_dir("evict");
        let size = entry_size(100, "image/png");
        let cap = 3 * size + 10;
        let cache = MediaCache::open(dir.clone(), cap).unwrap();
        for id in ["a", "b", "c"] {
            cache.put(id, &[1; 100], "image/png").await;
        }
        assert_eq!(cache.total(), 3 * size);
        // "a" is read, so "b" is now the least recently used.
        assert!(cache.get("a").await.is_some());
        cache.put("d", &[2; 100], "image/png").await;
        assert!(cache.get("b").await.is_none());
        for id in ["a", "c", "d"] {
            assert!(cache.get(id).await.is_some(), "{id}");
        }
        assert!(cache.total() <= cap);
        assert_eq!(on_disk(&dir), (3 * size, 3));
        // A big entry pushes out as many as it needs to.
        cache.put("e", &[3; 250], "image/png").await;
        assert!(cache.total() <= cap);
        assert!(on_disk(&dir).0 <= cap);
        assert!(cache.get("e").await.is_some());
        fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn an_entry_larger_than_the_cap_is_not_kept() {
        let dir = temp_dir("oversize");
        let cap = entry_size(100, "video/mp4");
        let cache = MediaCache::open(dir.clone(), cap).unwrap();
        cache.put("small", &[1; 100], "video/mp4").await;
        cache.put("huge", &[1; 101], "video/mp4").await;
        assert!(cache.get("huge").await.is_none());
        assert!(cache.get("small").await.is_some(), "others stay");
        assert_eq!(on_disk(&dir), (cap, 1));
        // Replacing an entry with an oversized version drops the old one.
        cache.put("small", &[1; 1000], "video/mp4").await;
        assert!(cache.get("small").await.is_none());
        assert_eq!((cache.total(), on_disk(&dir)), (0, (0, 0)));
        fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn reopening_counts_what_is_there() {
        let dir = temp_dir("reopen");
        let size = entry_size(100, "image/webp");
        {
            let cache = MediaCache::open(dir.clone(), 10 * size).unwrap();
            cache.put("old", &[1; 100], "image/webp").await;
            // Modification times order entries across restarts.
            tokio::time::sleep(Duration::from_millis(50)).await;
            cache.put("new", &[2; 100], "image/webp").await;
        }
        fs::write(dir.join("123-4.tmp"), b"half written").unwrap();
        let cache = MediaCache::open(dir.clone(), 2 * size).unwrap();
        assert_eq!(cache.total(), 2 * size);
        assert_eq!(on_disk(&dir), (2 * size, 2), "the temporary file is gone");
        assert_eq!(cache.get("new").await.unwrap().0, vec![2; 100]);
        cache.put("newest", &[3; 100], "image/webp").await;
        assert!(cache.get("old").await.is_none(), "the oldest went");
        assert!(cache.get("new").await.is_some());
        // Reopened with a smaller cap: evicted at once.
        drop(cache);
        let cache = MediaCache::open(dir.clone(), size).unwrap();
        assert_eq!(cache.total(), size);
        assert_eq!(on_disk(&dir), (size, 1));
        fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn hostile_ids_stay_inside_the_directory() {
        let parent = temp_dir("hostile");
        let dir = parent.join("cache");
        let cache = MediaCache::open(dir.clone(), 1 << 20).unwrap();
        let ids = [
            "../../etc/passwd",
            "..",
            ".",
            "/etc/passwd",
            "a\\..\\b",
            "nul\0byte",
            "x.tmp",
            "ünïcode",
        ];
        for id in ids {
            cache.put(id, id.as_bytes(), "text/plain").await;
        }
        for id in ids {
            assert_eq!(&cache.get(id).await.unwrap().0[..], id.as_bytes(), "{id:?}");
        }
        assert_eq!(on_disk(&dir).1, ids.len());
        for item in fs::read_dir(&dir).unwrap() {
            assert!(is_entry_name(
                &item.unwrap().file_name().into_string().unwrap()
            ));
        }
        assert_eq!(on_disk(&parent).1, 1, "nothing beside the cache directory");
        // Too long to name a file: not cached, no harm.
        let long = "9".repeat(MAX_ID_BYTES + 1);
        cache.put(&long, b"x", "text/plain").await;
        assert!(cache.get(&long).await.is_none());
        assert!(cache.get("").await.is_none());
        fs::remove_dir_all(&parent).ok();
    }

    #[tokio::test]
    async fn a_damaged_file_is_a_miss_and_is_dropped() {
        let dir = temp_dir("damaged");
        let cache = MediaCache::open(dir.clone(), 1 << 20).unwrap();
        cache.put("42", &[7; 100], "image/jpeg").await;
        let path = dir.join(entry_name("42").unwrap());
        let data = fs::read(&path).unwrap();
        fs::write(&path, &data[..data.len() - 1]).unwrap();
        assert!(cache.get("42").await.is_none());
        assert_eq!((cache.total(), on_disk(&dir).1), (0, 0));
        // Deleted behind the cache's back: a miss too.
        cache.put("43", &[7; 10], "image/jpeg").await;
        fs::remove_file(dir.join(entry_name("43").unwrap())).unwrap();
        assert!(cache.get("43").await.is_none());
        assert_eq!(cache.total(), 0);
        fs::remove_dir_all(&dir).ok();
    }
}

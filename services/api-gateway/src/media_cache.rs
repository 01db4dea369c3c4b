//! A size-capped on-disk cache of downloaded WhatsApp media, so a second
//! `GET /api/media/:mediaId` does not download again, and the files media
//! are streamed through (downloads, uploads), so no media is ever held in
//! memory whole.
//!
//! One file per entry, named after the hex-encoded media id (so no id can
//! name a path outside the directory), holding a small header (format,
//! length, content type) and the bytes. Entries are streamed into a
//! temporary file and renamed, so a crash never leaves a half-written file
//! under an entry's name. Sizes and recency are kept in memory; at start the
//! directory is scanned (recency from the files' modification times, which
//! reads refresh), so the cap holds across restarts. When the total passes
//! the cap, the least recently used entries go.
//!
//! A reader holds the entry's file open ([`CachedMedia`]) and reads it by
//! position, so an entry evicted (unlinked) while it is being served is
//! still served whole.
//!
//! The cache is an optimisation: its errors are logged and otherwise
//! ignored.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};

/// Media ids longer than this are not cached (the file name would be too
/// long); Meta's are about 16 digits.
const MAX_ID_BYTES: usize = 120;
const ENTRY_SUFFIX: &str = ".media";
const TEMP_SUFFIX: &str = ".tmp";
const MAGIC: &str = "WAMC1";
/// Digits of the length in a header written by streaming: the length is
/// known at the end only, then written over the zeros.
const LENGTH_DIGITS: usize = 20;
/// Enough to hold any header (content types are at most 255 bytes).
const HEADER_MAX: usize = MAGIC.len() + 1 + LENGTH_DIGITS + 1 + 255 + 1;
const FALLBACK_TYPE: &str = "application/octet-stream";
/// Buffer of a file being written (one per download under way).
const WRITE_BUFFER: usize = 64 * 1024;

/// The cache; clones share it.
#[derive(Clone)]
pub struct MediaCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
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

/// A media on disk, open for reading: a cache entry, or a downloaded file
/// the cache did not keep (already unlinked; it lives as long as this).
/// Clones share the open file; reads are by position, so they do not
/// disturb each other.
#[derive(Clone)]
pub struct CachedMedia {
    file: Arc<File>,
    /// Where the media's bytes start in the file (after the header).
    offset: u64,
    /// The media's length in bytes.
    pub length: u64,
    pub mime_type: String,
}

impl CachedMedia {
    /// Up to `len` bytes from `position` of the media (fewer only at its
    /// end). Blocking: call it from `spawn_blocking`.
    pub fn read_at(&self, position: u64, len: usize) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.length.saturating_sub(position))
            .unwrap_or(usize::MAX)
            .min(len);
        let mut buffer = vec![0; len];
        let mut filled = 0;
        while filled < len {
            let read = read_at(
                &self.file,
                &mut buffer[filled..],
                self.offset + position + filled as u64,
            )?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the media file is shorter than its header says",
                ));
            }
            filled += read;
        }
        Ok(buffer)
    }
}

#[cfg(unix)]
fn read_at(file: &File, buffer: &mut [u8], position: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buffer, position)
}

#[cfg(windows)]
fn read_at(file: &File, buffer: &mut [u8], position: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buffer, position)
}

/// A temporary file, removed when dropped unless it was renamed into the
/// cache.
pub struct TempFile {
    path: PathBuf,
    kept: bool,
}

impl TempFile {
    /// A new empty file in `dir`, open for reading and writing.
    pub async fn create(dir: &Path) -> io::Result<(Self, tokio::fs::File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let serial = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "whatsapp-clone-{}-{serial}{TEMP_SUFFIX}",
            std::process::id()
        ));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await?;
        Ok((Self { path, kept: false }, file))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            remove_quietly(&self.path);
        }
    }
}

/// A media being streamed to disk, in the entry format.
pub struct EntryWriter {
    file: BufWriter<tokio::fs::File>,
    temp: TempFile,
    header_len: u64,
    length: u64,
    mime_type: String,
}

/// A whole media on disk, to keep in the cache or serve once.
pub struct FinishedEntry {
    media: CachedMedia,
    temp: TempFile,
    /// The file's size, header included.
    size: u64,
}

impl EntryWriter {
    /// Starts a temporary file in `dir` (the cache's, so the rename into
    /// the cache is atomic) with a header for `mime_type`.
    pub async fn create(dir: &Path, mime_type: &str) -> io::Result<Self> {
        let mime_type = if is_header_safe(mime_type) {
            mime_type
        } else {
            FALLBACK_TYPE
        };
        let header = header(0, mime_type);
        let (temp, file) = TempFile::create(dir).await?;
        let mut file = BufWriter::with_capacity(WRITE_BUFFER, file);
        file.write_all(header.as_bytes()).await?;
        Ok(Self {
            file,
            temp,
            header_len: header.len() as u64,
            length: 0,
            mime_type: mime_type.to_owned(),
        })
    }

    /// Media bytes written so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes).await?;
        self.length += bytes.len() as u64;
        Ok(())
    }

    /// Writes the length into the header and syncs: the file is whole.
    pub async fn finish(mut self) -> io::Result<FinishedEntry> {
        self.file.flush().await?;
        let mut file = self.file.into_inner();
        file.seek(SeekFrom::Start(MAGIC.len() as u64 + 1)).await?;
        file.write_all(format!("{:0width$}", self.length, width = LENGTH_DIGITS).as_bytes())
            .await?;
        file.flush().await?;
        file.sync_data().await?;
        let file = file.into_std().await;
        Ok(FinishedEntry {
            media: CachedMedia {
                file: Arc::new(file),
                offset: self.header_len,
                length: self.length,
                mime_type: self.mime_type,
            },
            temp: self.temp,
            size: self.header_len + self.length,
        })
    }
}

impl FinishedEntry {
    /// Served once, not kept: the file goes when the last reader is done.
    pub fn detached(self) -> CachedMedia {
        self.media
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
        };
        inner.delete(&victims);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Where entries (and the temporary files that become them) live.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The cached media, open for reading, if present (touches the entry
    /// so it is evicted last).
    pub async fn open_entry(&self, media_id: &str) -> Option<CachedMedia> {
        let name = entry_name(media_id)?;
        let serial = self.inner.lock().entries.get(&name)?.serial;
        let path = self.inner.dir.join(&name);
        let read = tokio::task::spawn_blocking(move || open_entry(&path)).await;
        let failure = match read {
            Ok(Ok(Some(media))) => {
                self.inner.lock().touch(&name);
                return Some(media);
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

    /// Keeps a finished download as the entry of `media_id` (renamed into
    /// place), then evicts least recently used entries until the total is
    /// at most the cap. An entry larger than the cap is not kept. Either
    /// way the media is returned, open for reading. Errors are logged and
    /// ignored.
    pub async fn keep(&self, media_id: &str, entry: FinishedEntry) -> CachedMedia {
        let Some(name) = entry_name(media_id) else {
            tracing::debug!(media_id, "media cache: id too long to cache");
            return entry.detached();
        };
        if entry.size > self.inner.max_bytes {
            tracing::debug!(
                media_id,
                size = entry.size,
                "media cache: larger than the whole cache, not kept"
            );
            let mut index = self.inner.lock();
            if index.remove(&name, None) {
                remove_quietly(&self.inner.dir.join(&name));
            }
            return entry.detached();
        }
        let inner = self.inner.clone();
        let media = entry.media.clone();
        let stored = tokio::task::spawn_blocking(move || inner.store(name, entry)).await;
        let error = match stored {
            Ok(Ok(())) => return media,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(media_id, error = %error, "media cache: cannot store an entry");
        media
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

    /// Renames `entry` into place as `name`, then evicts down to the cap.
    fn store(&self, name: String, mut entry: FinishedEntry) -> io::Result<()> {
        let mut index = self.lock();
        // Renamed under the lock, so the index describes the file that won.
        fs::rename(&entry.temp.path, self.dir.join(&name))?;
        entry.temp.kept = true;
        index.insert(name, entry.size);
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

/// `WAMC1 <length, zero-padded>\n<content type>\n`, then the bytes.
fn header(length: u64, mime_type: &str) -> String {
    format!(
        "{MAGIC} {length:0width$}\n{mime_type}\n",
        width = LENGTH_DIGITS
    )
}

/// Fit for a `Content-Type` header: visible ASCII and spaces, not too long.
fn is_header_safe(mime_type: &str) -> bool {
    !mime_type.is_empty()
        && mime_type.len() <= 255
        && mime_type.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

/// The header's length, the media's length and its content type; `None`
/// when `head` does not start with a header.
fn parse_header(head: &[u8]) -> Option<(u64, u64, String)> {
    let first = head.iter().position(|&b| b == b'\n')?;
    let second = first + 1 + head[first + 1..].iter().position(|&b| b == b'\n')?;
    let length: u64 = std::str::from_utf8(&head[..first])
        .ok()?
        .strip_prefix(MAGIC)?
        .strip_prefix(' ')?
        .parse()
        .ok()?;
    let mime_type = std::str::from_utf8(&head[first + 1..second]).ok()?;
    if !is_header_safe(mime_type) {
        return None;
    }
    Some((second as u64 + 1, length, mime_type.to_owned()))
}

/// Opens an entry (`None` when it is not a whole one) and marks it used on
/// disk too (its modification time orders entries at the next start).
fn open_entry(path: &Path) -> io::Result<Option<CachedMedia>> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut head = vec![0; HEADER_MAX];
    let mut filled = 0;
    while filled < head.len() {
        match read_at(&file, &mut head[filled..], filled as u64)? {
            0 => break,
            read => filled += read,
        }
    }
    head.truncate(filled);
    let Some((offset, length, mime_type)) = parse_header(&head) else {
        return Ok(None);
    };
    if offset.checked_add(length) != Some(size) {
        return Ok(None);
    }
    // Best effort: only the order after a restart depends on it.
    let _ = file.set_modified(SystemTime::now());
    Ok(Some(CachedMedia {
        file: Arc::new(file),
        offset,
        length,
        mime_type,
    }))
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
        (header(0, mime_type).len() + len) as u64
    }

    /// Streams `bytes` in (two writes) and keeps them.
    async fn put(cache: &MediaCache, media_id: &str, bytes: &[u8], mime_type: &str) {
        let mut writer = EntryWriter::create(cache.dir(), mime_type).await.unwrap();
        let (a, b) = bytes.split_at(bytes.len() / 2);
        writer.write(a).await.unwrap();
        writer.write(b).await.unwrap();
        let media = cache.keep(media_id, writer.finish().await.unwrap()).await;
        assert_eq!(
            media.read_at(0, usize::MAX).unwrap(),
            bytes,
            "served whole either way"
        );
    }

    /// The cached bytes and type.
    async fn get(cache: &MediaCache, media_id: &str) -> Option<(Vec<u8>, String)> {
        let media = cache.open_entry(media_id).await?;
        let bytes = media.read_at(0, usize::MAX).unwrap();
        assert_eq!(bytes.len() as u64, media.length);
        Some((bytes, media.mime_type))
    }

    #[tokio::test]
    async fn get_after_put_returns_the_bytes_and_type() {
        let dir = temp_dir("roundtrip");
        let cache = MediaCache::open(dir.clone(), 1 << 20).unwrap();
        assert!(get(&cache, "1234").await.is_none());
        put(&cache, "1234", b"\xff\xd8 jpeg\n\nbytes", "image/jpeg").await;
        let (bytes, mime_type) = get(&cache, "1234").await.unwrap();
        assert_eq!(&bytes[..], b"\xff\xd8 jpeg\n\nbytes");
        assert_eq!(mime_type, "image/jpeg");
        // Replaced, counted once; empty bytes and odd types are fine.
        put(&cache, "1234", b"", "audio/ogg; codecs=opus").await;
        assert_eq!(
            get(&cache, "1234").await.unwrap(),
            (Vec::new(), "audio/ogg; codecs=opus".to_owned())
        );
        put(&cache, "5678", b"x", "bad\r\ntype").await;
        assert_eq!(get(&cache, "5678").await.unwrap().1, FALLBACK_TYPE);
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
            put(&cache, id, &[1; 100], "image/png").await;
        }
        assert_eq!(cache.total(), 3 * size);
        // "a" is read, so "b" is now the least recently used.
        assert!(get(&cache, "a").await.is_some());
        put(&cache, "d", &[2; 100], "image/png").await;
        assert!(get(&cache, "b").await.is_none());
        for id in ["a", "c", "d"] {
            assert!(get(&cache, id).await.is_some(), "{id}");
        }
        assert!(cache.total() <= cap);
        assert_eq!(on_disk(&dir), (3 * size, 3));
        // A big entry pushes out as many as it needs to.
        put(&cache, "e", &[3; 250], "image/png").await;
        assert!(cache.total() <= cap);
        assert!(on_disk(&dir).0 <= cap);
        assert!(get(&cache, "e").await.is_some());
        fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn an_entry_larger_than_the_cap_is_not_kept() {
        let dir = temp_dir("oversize");
        let cap = entry_size(100, "video/mp4");
        let cache = MediaCache::open(dir.clone(), cap).unwrap();
        put(&cache, "small", &[1; 100], "video/mp4").await;
        put(&cache, "huge", &[1; 101], "video/mp4").await;
        assert!(get(&cache, "huge").await.is_none());
        assert!(get(&cache, "small").await.is_some(), "others stay");
        assert_eq!(on_disk(&dir), (cap, 1));
        // Replacing an entry with an oversized version drops the old one.
        put(&cache, "small", &[1; 1000], "video/mp4").await;
        assert!(get(&cache, "small").await.is_none());
        assert_eq!((cache.total(), on_disk(&dir)), (0, (0, 0)));
        fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn reopening_counts_what_is_there() {
        let dir = temp_dir("reopen");
        let size = entry_size(100, "image/webp");
        {
            let cache = MediaCache::open(dir.clone(), 10 * size).unwrap();
            put(&cache, "old", &[1; 100], "image/webp").await;
            // Modification times order entries across restarts.
            tokio::time::sleep(Duration::from_millis(50)).await;
            put(&cache, "new", &[2; 100], "image/webp").await;
        }
        fs::write(dir.join("123-4.tmp"), b"half written").unwrap();
        let cache = MediaCache::open(dir.clone(), 2 * size).unwrap();
        assert_eq!(cache.total(), 2 * size);
        assert_eq!(on_disk(&dir), (2 * size, 2), "the temporary file is gone");
        assert_eq!(get(&cache, "new").await.unwrap().0, vec![2; 100]);
        put(&cache, "newest", &[3; 100], "image/webp").await;
        assert!(get(&cache, "old").await.is_none(), "the oldest went");
        assert!(get(&cache, "new").await.is_some());
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
            put(&cache, id, id.as_bytes(), "text/plain").await;
        }
        for id in ids {
            assert_eq!(
                &get(&cache, id).await.unwrap().0[..],
                id.as_bytes(),
                "{id:?}"
            );
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
        put(&cache, &long, b"x", "text/plain").await;
        assert!(get(&cache, &long).await.is_none());
        assert!(get(&cache, "").await.is_none());
        fs::remove_dir_all(&parent).ok();
    }

    #[tokio::test]
    async fn an_entry_evicted_while_it_is_read_is_still_read_whole() {
        let dir = temp_dir("evicted-reader");
        let cache = MediaCache::open(dir.clone(), entry_size(1000, "video/mp4")).unwrap();
        put(&cache, "first", &[1; 1000], "video/mp4").await;
        let reader = cache.open_entry("first").await.unwrap();
        // The next entry pushes the first out (its file is unlinked).
        put(&cache, "second", &[2; 1000], "video/mp4").await;
        assert!(get(&cache, "first").await.is_none());
        assert_eq!(on_disk(&dir).1, 1);
        assert_eq!(reader.read_at(0, usize::MAX).unwrap(), vec![1; 1000]);
        assert_eq!(
            reader.read_at(990, 100).unwrap(),
            vec![1; 10],
            "to the end only"
        );
        assert!(reader.read_at(1000, 10).unwrap().is_empty());
        fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn a_damaged_file_is_a_miss_and_is_dropped() {
        let dir = temp_dir("damaged");
        let cache = MediaCache::open(dir.clone(), 1 << 20).unwrap();
        put(&cache, "42", &[7; 100], "image/jpeg").await;
        let path = dir.join(entry_name("42").unwrap());
        let data = fs::read(&path).unwrap();
        fs::write(&path, &data[..data.len() - 1]).unwrap();
        assert!(get(&cache, "42").await.is_none());
        assert_eq!((cache.total(), on_disk(&dir).1), (0, 0));
        // Deleted behind the cache's back: a miss too.
        put(&cache, "43", &[7; 10], "image/jpeg").await;
        fs::remove_file(dir.join(entry_name("43").unwrap())).unwrap();
        assert!(get(&cache, "43").await.is_none());
        assert_eq!(cache.total(), 0);
        fs::remove_dir_all(&dir).ok();
    }
}

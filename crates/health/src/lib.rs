//! Whether a service can store what it is given, as its write paths last
//! saw it: a write that failed for lack of room (a full disk, JetStream out
//! of storage) marks the service as unable to store until a later write, or
//! a probe, succeeds. Readiness reads it, so `/readyz` tells the truth
//! without writing on every check.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Shared by a broker's write paths and its readiness check.
#[derive(Clone, Debug, Default)]
pub struct WriteHealth(Arc<Mutex<Option<Exhausted>>>);

#[derive(Clone, Copy, Debug)]
struct Exhausted {
    /// In words, safe to show (no driver text).
    reason: &'static str,
    /// When it was last confirmed (a failed write or probe).
    checked: Instant,
}

/// How often a readiness check may probe while writes are failing.
const PROBE_EVERY: Duration = Duration::from_secs(1);

impl WriteHealth {
    /// A write failed for lack of room; `reason` says so in words.
    pub fn out_of_space(&self, reason: &'static str) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if state.is_none() {
            tracing::warn!(reason, "cannot store: not ready until writes succeed again");
        }
        *state = Some(Exhausted {
            reason,
            checked: Instant::now(),
        });
    }

    /// A write succeeded: there is room again.
    pub fn wrote(&self) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(was) = state.take() {
            tracing::info!(was = was.reason, "writes succeed again");
        }
    }

    /// Why writes fail, if they do.
    pub fn failing(&self) -> Option<&'static str> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|e| e.reason)
    }

    /// Why writes fail, and whether it is time to probe again (then the
    /// caller probes and reports with [`Self::out_of_space`] or
    /// [`Self::wrote`]); at most one probe a second.
    pub fn due_for_probe(&self) -> Option<(&'static str, bool)> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let exhausted = state.as_mut()?;
        let due = exhausted.checked.elapsed() >= PROBE_EVERY;
        if due {
            // Concurrent checks do not all probe.
            exhausted.checked = Instant::now();
        }
        Some((exhausted.reason, due))
    }
}

/// Bytes free for unprivileged writers on the filesystem holding `path`.
#[cfg(unix)]
pub fn available_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string and `stats` is a writable
    // statvfs that the call fills in when it returns 0.
    let status = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if status != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: filled in by the successful call above.
    let stats = unsafe { stats.assume_init() };
    #[allow(clippy::useless_conversion)] // the field types differ by platform
    Ok(u64::from(stats.f_bavail).saturating_mul(u64::from(stats.f_frsize)))
}

#[cfg(not(unix))]
pub fn available_bytes(_path: &std::path::Path) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_remembered_until_a_write_succeeds() {
        let health = WriteHealth::default();
        assert_eq!(health.failing(), None);
        assert!(health.due_for_probe().is_none());
        health.out_of_space("the disk is full");
        assert_eq!(health.failing(), Some("the disk is full"));
        // Just confirmed: not probed again at once.
        assert_eq!(health.due_for_probe(), Some(("the disk is full", false)));
        health.clone().wrote();
        assert_eq!(health.failing(), None);
    }

    #[test]
    fn the_free_space_of_the_temp_dir_is_known() {
        assert!(available_bytes(&std::env::temp_dir()).unwrap() > 0);
        assert!(available_bytes(std::path::Path::new("/no/such/dir")).is_err());
    }
}

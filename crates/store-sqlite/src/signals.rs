//! The queue signals of a SQLite database, in a file beside it (`PATH-mdmsig`) that every
//! process opening the database maps: a process's enqueue is seen by the others' idle
//! check-ins with no database read and no message (`cloudvpp_store::signals`).

use cloudvpp_store::signals::{QueueSignals, SlotMemory, WORDS};
use cloudvpp_store::{Result, StoreError};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// The mapped file; the shared lock held on it tells a starting process it is not alone.
struct MappedSlots {
    map: memmap2::MmapMut,
    _file: File,
}

impl SlotMemory for MappedSlots {
    fn words(&self) -> &[AtomicU64] {
        words(&self.map)
    }
}

/// The mapping as atomics.
#[allow(unsafe_code)]
fn words(map: &memmap2::MmapMut) -> &[AtomicU64] {
    assert!(map.len() >= WORDS * 8);
    // SAFETY: the mapping is page-aligned (so 8-byte aligned), at least WORDS * 8 bytes
    // long (checked above), lives as long as the returned borrow, and is only ever
    // accessed through atomics, by this and other processes (shared mapping); any bit
    // pattern is a valid u64.
    unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<AtomicU64>(), WORDS) }
}

/// Maps (creating it, mode 0600, if missing) the signals file of the database at `db`.
/// The first process to open it clears in-flight marks a crashed writer left behind.
pub fn open(db: &Path) -> Result<QueueSignals> {
    let mut path = db.as_os_str().to_owned();
    path.push("-mdmsig");
    let path = std::path::PathBuf::from(path);
    let fail = |what: &str, e: std::io::Error| {
        StoreError::Other(format!("{what} {}: {e}", path.display()).into())
    };
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&path).map_err(|e| fail("opening", e))?;
    let alone = match file.try_lock() {
        Ok(()) => true,
        Err(TryLockError::WouldBlock) => false,
        Err(TryLockError::Error(e)) => return Err(fail("locking", e)),
    };
    let len = (WORDS * 8) as u64;
    if file.metadata().map_err(|e| fail("reading", e))?.len() < len {
        file.set_len(len).map_err(|e| fail("sizing", e))?;
    }
    // SAFETY is in `words`; the map itself is an ordinary shared file mapping.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(|e| fail("mapping", e))?;
    if alone {
        // Generations only grow (a stamp taken before must not come true again); in-flight
        // marks left by a writer that died are cleared.
        let (generations, in_flight) = words(&map).split_at(WORDS / 2);
        for g in generations {
            g.fetch_add(1, SeqCst);
        }
        for f in in_flight {
            f.store(0, SeqCst);
        }
        tracing::debug!(path = %path.display(), "queue signals reset: no other process has the database open");
    }
    // Held while the mapping lives (the file moves into it): a process that starts later
    // is not alone.
    file.lock_shared().map_err(|e| fail("locking", e))?;
    Ok(QueueSignals::new(
        Box::new(MappedSlots { map, _file: file }),
        true,
    ))
}

#[cfg(test)]
mod tests {
    use super::open;

    #[test]
    fn processes_on_one_file_see_each_others_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        // Two mappings with their own locks, as two processes would have.
        let a = open(&db).unwrap();
        let b = open(&db).unwrap();
        let stamp = b.stamp("dev").unwrap();
        drop(a.writing(["dev"]));
        assert!(!b.unchanged("dev", stamp), "a's write must void b's stamp");
        let stamp = b.stamp("dev").unwrap();
        assert!(b.unchanged("dev", stamp));
        // A writer that dies between its commit and its guard's drop leaves the slot in
        // flight: never trusted, until a process opens the file alone.
        std::mem::forget(a.writing(["dev"]));
        assert_eq!(b.stamp("dev"), None);
        let c = open(&db).unwrap();
        assert_eq!(c.stamp("dev"), None, "not alone: nothing is cleared");
        drop((a, b, c));
        let alone = open(&db).unwrap();
        assert!(alone.stamp("dev").is_some(), "the first process clears it");
    }
}

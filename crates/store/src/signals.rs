//! Queue signals: lets the MDM service remember that an enrollment's queue is empty and
//! answer its idle check-ins without reading the database, while staying exact.
//!
//! Enrollments are hashed into [`SLOTS`] slots, each with a generation and a count of
//! writes in flight. A writer that may add commands to a slot's queues marks the slot
//! in flight before it commits, and after the commit (or a rollback) bumps its
//! generation and unmarks it ([`QueueSignals::writing`]). A reader takes a
//! [`QueueStamp`] (the slot's generation, refused while a write is in flight) *before*
//! it reads a queue; an empty answer stays true for as long as the slot is not in flight
//! and its generation is the stamped one ([`QueueSignals::unchanged`]). A write that
//! commits after the read made the slot in flight before it committed, and leaves it
//! with a new generation: either way the stamp no longer holds. A writer that dies
//! between commit and unmarking leaves its slots in flight: never trusted again until
//! the memory is reset, which costs reads, never a wrong answer.
//!
//! Where the words live is the backend's choice ([`SlotMemory`]): process memory, or a
//! file mapped by every process that opens the same SQLite database. Writers of other
//! machines (PostgreSQL) are heard through [`QueueSignals::remote_changed`]; while they
//! cannot be heard, [`QueueSignals::set_live`]`(false)` turns every stamp down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

/// Slots enrollments are hashed into: enough that one busy device rarely makes another's
/// cached answer stale, few enough to map in 64 KiB.
pub const SLOTS: usize = 4096;

/// Words a [`SlotMemory`] must hold: a generation and an in-flight count per slot.
pub const WORDS: usize = 2 * SLOTS;

/// The words of the slots: [`WORDS`] atomics, generations first.
pub trait SlotMemory: Send + Sync {
    /// The words; always [`WORDS`] long.
    fn words(&self) -> &[AtomicU64];
}

/// Slots in this process's memory: for PostgreSQL (other instances are heard through the
/// database) and in-memory SQLite databases (no other process can open them).
pub struct HeapSlots(Box<[AtomicU64]>);

impl Default for HeapSlots {
    fn default() -> Self {
        HeapSlots((0..WORDS).map(|_| AtomicU64::new(0)).collect())
    }
}

impl SlotMemory for HeapSlots {
    fn words(&self) -> &[AtomicU64] {
        &self.0
    }
}

/// What a reader saw of an enrollment's slot before it read the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStamp {
    epoch: u64,
    generation: u64,
}

/// See the module documentation.
pub struct QueueSignals {
    memory: Box<dyn SlotMemory>,
    /// Bumped whenever remote writes may have gone unheard: every stamp before it is void.
    epoch: AtomicU64,
    /// Whether every writer is heard.
    live: AtomicBool,
}

impl QueueSignals {
    /// Signals over `memory`; `live` says whether every writer is heard from the start.
    pub fn new(memory: Box<dyn SlotMemory>, live: bool) -> Self {
        assert_eq!(memory.words().len(), WORDS, "slot memory of the wrong size");
        QueueSignals {
            memory,
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(live),
        }
    }

    /// Signals in process memory, every writer heard (one process owns the database).
    pub fn local() -> Self {
        Self::new(Box::new(HeapSlots::default()), true)
    }

    /// The slot of an enrollment ID: FNV-1a, so that every process and every build of
    /// cloudvpp that maps the same memory agrees.
    pub fn slot(id: &str) -> usize {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % SLOTS as u64) as usize
    }

    fn generation(&self, slot: usize) -> &AtomicU64 {
        &self.memory.words()[slot]
    }

    fn in_flight(&self, slot: usize) -> &AtomicU64 {
        &self.memory.words()[SLOTS + slot]
    }

    /// A stamp to take before reading `id`'s queue, or `None` when an answer read now
    /// could not be trusted later (a write in flight, or writers not heard).
    pub fn stamp(&self, id: &str) -> Option<QueueStamp> {
        if !self.live.load(SeqCst) {
            return None;
        }
        let slot = Self::slot(id);
        let epoch = self.epoch.load(SeqCst);
        if self.in_flight(slot).load(SeqCst) != 0 {
            return None;
        }
        Some(QueueStamp {
            epoch,
            generation: self.generation(slot).load(SeqCst),
        })
    }

    /// Whether nothing can have been queued for `id` since `stamp` was taken.
    pub fn unchanged(&self, id: &str, stamp: QueueStamp) -> bool {
        let slot = Self::slot(id);
        self.live.load(SeqCst)
            && self.epoch.load(SeqCst) == stamp.epoch
            && self.in_flight(slot).load(SeqCst) == 0
            && self.generation(slot).load(SeqCst) == stamp.generation
    }

    /// Marks the slots of `ids` in flight until the guard is dropped, which bumps their
    /// generations: hold it across the commit of a write that queues commands for `ids`.
    pub fn writing<'a, I>(&'a self, ids: I) -> WriteGuard<'a>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut slots: Vec<usize> = ids.into_iter().map(Self::slot).collect();
        slots.sort_unstable();
        slots.dedup();
        for &s in &slots {
            self.in_flight(s).fetch_add(1, SeqCst);
        }
        WriteGuard {
            signals: self,
            slots,
        }
    }

    /// Another instance committed writes to these slots.
    pub fn remote_changed(&self, slots: impl IntoIterator<Item = usize>) {
        for s in slots {
            if s < SLOTS {
                self.generation(s).fetch_add(1, SeqCst);
            }
        }
    }

    /// Another instance committed writes to slots it did not name: every stamp is void.
    pub fn remote_changed_all(&self) {
        self.epoch.fetch_add(1, SeqCst);
    }

    /// Whether other instances' writes are heard (the listener is connected). Any change
    /// voids every stamp: writes may have gone unheard while it was down.
    pub fn set_live(&self, live: bool) {
        self.epoch.fetch_add(1, SeqCst);
        self.live.store(live, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
    }
}

/// Slots in flight for one write; dropping it (after the commit or a rollback) bumps their
/// generations and takes them out of flight.
pub struct WriteGuard<'a> {
    signals: &'a QueueSignals,
    slots: Vec<usize>,
}

impl WriteGuard<'_> {
    /// The slots this write touches (for telling other instances).
    pub fn slots(&self) -> &[usize] {
        &self.slots
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        for &s in &self.slots {
            self.signals.generation(s).fetch_add(1, SeqCst);
            self.signals.in_flight(s).fetch_sub(1, SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_after_the_stamp_voids_it_whenever_it_commits() {
        let s = QueueSignals::local();
        let stamp = s.stamp("dev-1").unwrap();
        assert!(s.unchanged("dev-1", stamp));
        let guard = s.writing(["dev-1"]);
        // In flight: neither the old stamp nor a new one is trusted.
        assert!(!s.unchanged("dev-1", stamp));
        assert_eq!(s.stamp("dev-1"), None);
        drop(guard);
        assert!(!s.unchanged("dev-1", stamp));
        let again = s.stamp("dev-1").unwrap();
        assert!(s.unchanged("dev-1", again));
    }

    #[test]
    fn other_slots_keep_their_stamps() {
        let s = QueueSignals::local();
        let (a, b) = ("dev-a", "dev-b");
        assert_ne!(QueueSignals::slot(a), QueueSignals::slot(b));
        let sb = s.stamp(b).unwrap();
        drop(s.writing([a]));
        assert!(s.unchanged(b, sb));
    }

    #[test]
    fn unheard_writers_void_every_stamp() {
        let s = QueueSignals::new(Box::new(HeapSlots::default()), false);
        assert_eq!(s.stamp("x"), None);
        s.set_live(true);
        let st = s.stamp("x").unwrap();
        s.remote_changed_all();
        assert!(!s.unchanged("x", st));
        let st = s.stamp("x").unwrap();
        s.remote_changed([QueueSignals::slot("x")]);
        assert!(!s.unchanged("x", st));
        let st = s.stamp("x").unwrap();
        s.set_live(false);
        s.set_live(true);
        assert!(!s.unchanged("x", st));
    }

    #[test]
    fn slots_are_fixed_across_builds() {
        // The mapped file is shared by every process on a SQLite database, whatever
        // their build: the hash must never change.
        assert_eq!(
            QueueSignals::slot(""),
            (0xcbf2_9ce4_8422_2325u64 % 4096) as usize
        );
        assert_eq!(
            QueueSignals::slot("a"),
            (0xaf63_dc4c_8601_ec8cu64 % 4096) as usize
        );
    }
}

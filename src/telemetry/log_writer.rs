//! Where log lines go: stderr, in batches. Every allowed check writes a decision line, and one
//! `write(2)` per line to the pipe a container runtime reads cost more CPU than the Cedar
//! evaluation itself (BENCHMARKS.md, "Decision log"). Lines are appended to a pending buffer
//! instead and written out, in order and never split, when it holds [`FLUSH_BYTES`], every
//! [`FLUSH_EVERY`] by a background thread, and when the [`LogGuard`] is dropped at shutdown.
//!
//! A check never waits on stderr: appending holds the buffer's lock for one copy; the write
//! happens outside it (the pending buffer is swapped out first), and a check that fills the
//! buffer writes it only if no write is under way. If stderr stops draining, pending lines
//! grow to [`MAX_PENDING`] and then new lines are dropped and counted
//! (`cedargate_log_lines_dropped_total`): authorization does not stall on a stuck log pipe.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

/// A check that brings the pending lines to this size writes them out (if nobody is writing).
pub const FLUSH_BYTES: usize = 64 * 1024;
/// The background thread writes out at least this often (the most a line waits).
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Pending lines beyond this (stderr not draining) are dropped and counted.
pub const MAX_PENDING: usize = 8 * 1024 * 1024;

/// Lines dropped because stderr did not drain, since start.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped so far (for `cedargate_log_lines_dropped_total`).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// A `MakeWriter` for tracing-subscriber: batched stderr.
#[derive(Clone, Debug, Default)]
pub struct BatchedStderr {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Formatted lines not yet written.
    pending: Mutex<Vec<u8>>,
    /// Held while a batch is written, so batches leave in the order they were cut.
    writing: Mutex<()>,
    /// Where a batch goes: stderr (a recorder in unit tests).
    out: fn(&[u8]),
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            pending: Mutex::default(),
            writing: Mutex::default(),
            out: to_stderr,
        }
    }
}

/// A failed write (stderr closed) loses the batch, as an unbuffered write would have lost
/// its line.
fn to_stderr(batch: &[u8]) {
    let _ = std::io::stderr().write_all(batch);
}

/// Writes out what is pending when dropped; keep it for the life of the process.
#[must_use = "dropping the guard writes out the log buffer; keep it until shutdown"]
#[derive(Debug)]
pub struct LogGuard(BatchedStderr);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.0.flush();
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BatchedStderr {
    /// The writer, its shutdown guard, and the thread that writes out every [`FLUSH_EVERY`].
    pub fn start() -> (Self, LogGuard) {
        let writer = Self::default();
        let flusher = writer.clone();
        let started = std::thread::Builder::new()
            .name("cedargate-log".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flusher.flush();
                }
            });
        if let Err(err) = started {
            // Lines are still written when the buffer fills and at shutdown.
            let _ = writeln!(
                std::io::stderr(),
                "cedargate: log flush thread not started ({err}); log lines are written in 64 KiB batches"
            );
        }
        let guard = LogGuard(writer.clone());
        (writer, guard)
    }

    /// Writes out everything pending (waits for a write under way).
    pub fn flush(&self) {
        let _writing = locked(&self.inner.writing);
        self.write_batch();
    }

    /// Appends one formatted line; writes the batch out if it is full and nobody is writing.
    fn append(&self, line: &[u8]) {
        let full = {
            let mut pending = locked(&self.inner.pending);
            if pending.len().saturating_add(line.len()) > MAX_PENDING {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                return;
            }
            pending.extend_from_slice(line);
            pending.len() >= FLUSH_BYTES
        };
        if full {
            let writing = match self.inner.writing.try_lock() {
                Ok(guard) => Some(guard),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if writing.is_some() {
                self.write_batch();
            }
        }
    }

    /// Cuts the pending lines and writes them (the caller holds `writing`).
    fn write_batch(&self) {
        let batch = std::mem::take(&mut *locked(&self.inner.pending));
        if !batch.is_empty() {
            (self.inner.out)(&batch);
        }
    }
}

/// The writer of one formatted event (tracing-subscriber formats a whole line, then writes it).
#[derive(Debug)]
pub struct LineWriter<'a> {
    writer: &'a BatchedStderr,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.writer.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { writer: self }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    thread_local! {
        /// Batches written on this test's thread.
        static WRITTEN: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    fn record(batch: &[u8]) {
        WRITTEN.with(|w| w.borrow_mut().push(batch.to_vec()));
    }

    fn recording() -> BatchedStderr {
        BatchedStderr {
            inner: Arc::new(Inner {
                out: record,
                ..Inner::default()
            }),
        }
    }

    fn written() -> Vec<Vec<u8>> {
        WRITTEN.with(|w| w.borrow_mut().drain(..).collect())
    }

    fn pending(writer: &BatchedStderr) -> usize {
        locked(&writer.inner.pending).len()
    }

    #[test]
    fn lines_wait_until_the_batch_is_full_or_flushed_and_leave_whole_and_in_order() {
        let writer = recording();
        writer.make_writer().write_all(b"one\n").unwrap();
        writer.make_writer().write_all(b"two\n").unwrap();
        assert_eq!(pending(&writer), 8);
        assert!(written().is_empty());
        writer.flush();
        assert_eq!(written(), vec![b"one\ntwo\n".to_vec()]);

        let big = vec![b'x'; FLUSH_BYTES];
        writer.make_writer().write_all(b"head\n").unwrap();
        writer.make_writer().write_all(&big).unwrap();
        let batches = written();
        assert_eq!(batches.len(), 1, "a full batch is written at once");
        assert!(batches[0].starts_with(b"head\nxxx"));
        assert_eq!(batches[0].len(), 5 + FLUSH_BYTES);
        assert_eq!(pending(&writer), 0);
        writer.flush();
        assert!(written().is_empty(), "nothing pending, nothing written");
    }

    #[test]
    fn a_stuck_write_never_blocks_a_line_and_overflow_is_dropped_and_counted() {
        let writer = recording();
        // A batch "being written" to a stderr that does not drain holds the write lock.
        let stuck = locked(&writer.inner.writing);
        let line = vec![b'y'; 1024 * 1024];
        for _ in 0..8 {
            writer.make_writer().write_all(&line).unwrap();
        }
        assert!(
            written().is_empty(),
            "full batches wait while a write is under way"
        );
        assert_eq!(pending(&writer), MAX_PENDING);
        let before = dropped_lines();
        writer.make_writer().write_all(b"one more\n").unwrap();
        assert_eq!(pending(&writer), MAX_PENDING);
        assert_eq!(dropped_lines(), before + 1);
        drop(stuck);
        writer.flush();
        assert_eq!(written().concat().len(), MAX_PENDING);
    }
}

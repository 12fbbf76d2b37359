//! Where log lines go: stderr, in batches. Every allowed check writes a decision line, and one
//! `write(2)` per line to the pipe a container runtime reads cost more CPU than the Cedar
//! evaluation itself (BENCHMARKS.md, "Decision log"). Lines are appended to a pending buffer
//! instead and written out, in order and never split, by a background thread: every
//! [`FLUSH_EVERY`], at once when [`FLUSH_BYTES`] are pending, and by the [`LogGuard`] at
//! shutdown (bounded; lines logged after it are written at once).
//!
//! A check never waits on stderr: appending holds the buffer's lock for one copy, and only the
//! flusher writes (the pending buffer is cut first, so appends continue during a write). If
//! stderr stops draining, pending lines grow to [`MAX_PENDING`] and then new lines are dropped
//! and counted (`cedargate_log_lines_dropped_total`), as are lines of a batch stderr refused:
//! authorization does not stall on a stuck log pipe.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Pending lines of this size wake the flusher.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// The flusher writes out at least this often (the most a line waits).
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
    out: fn(&[u8]) -> std::io::Result<()>,
    /// The thread that writes batches out; woken when a batch is full.
    flusher: OnceLock<Thread>,
    /// Set once the guard has flushed at shutdown: later lines are written at once.
    closed: AtomicBool,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            pending: Mutex::default(),
            writing: Mutex::default(),
            out: to_stderr,
            flusher: OnceLock::new(),
            closed: AtomicBool::new(false),
        }
    }
}

fn to_stderr(batch: &[u8]) -> std::io::Result<()> {
    std::io::stderr().write_all(batch)
}

/// How long shutdown waits for a write under way (a stderr that does not drain).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Writes out what is pending when dropped; keep it for the life of the process. Lines logged
/// after it is dropped are written at once.
#[must_use = "dropping the guard writes out the log buffer; keep it until shutdown"]
#[derive(Debug)]
pub struct LogGuard(BatchedStderr);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.0.inner.closed.store(true, Ordering::Release);
        // Bounded: a stuck stderr must not turn SIGTERM into a hang.
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        loop {
            if let Some(_writing) = try_locked(&self.0.inner.writing) {
                self.0.write_batch();
                return;
            }
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn try_locked<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl BatchedStderr {
    /// The writer and its shutdown guard. Nothing is written until [`Self::start_flusher`]
    /// runs, except when the guard is dropped.
    pub fn new() -> (Self, LogGuard) {
        let writer = Self::default();
        let guard = LogGuard(writer.clone());
        (writer, guard)
    }

    /// Starts the thread that writes batches out: every [`FLUSH_EVERY`], and at once when a
    /// check fills a batch. It ends when the writer is gone.
    pub fn start_flusher(&self) {
        let weak = Arc::downgrade(&self.inner);
        let started = std::thread::Builder::new()
            .name("cedargate-log".into())
            .spawn(move || {
                while let Some(inner) = weak.upgrade() {
                    BatchedStderr { inner }.flush();
                    std::thread::park_timeout(FLUSH_EVERY);
                }
            });
        match started {
            Ok(handle) => {
                let _ = self.inner.flusher.set(handle.thread().clone());
            }
            Err(err) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "cedargate: log flush thread not started ({err}); log lines are written at shutdown only"
                );
            }
        }
    }

    /// Writes out everything pending (waits for a write under way).
    pub fn flush(&self) {
        let _writing = locked(&self.inner.writing);
        self.write_batch();
    }

    /// Appends one complete line (ending in `\n`) formatted elsewhere: the decision log.
    pub fn write_line(&self, line: &[u8]) {
        self.append(line);
    }

    /// Appends one formatted line. A full batch wakes the flusher; the caller never writes
    /// (after shutdown, it does: there is no flusher to wait for then).
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
        if self.inner.closed.load(Ordering::Acquire) {
            if let Some(_writing) = try_locked(&self.inner.writing) {
                self.write_batch();
            }
        } else if full && let Some(flusher) = self.inner.flusher.get() {
            flusher.unpark();
        }
    }

    /// Cuts the pending lines and writes them (the caller holds `writing`). A batch that
    /// cannot be written (stderr closed) is counted as dropped lines.
    fn write_batch(&self) {
        let batch = std::mem::take(&mut *locked(&self.inner.pending));
        if !batch.is_empty() && (self.inner.out)(&batch).is_err() {
            let lines = batch.iter().filter(|b| **b == b'\n').count();
            DROPPED.fetch_add(u64::try_from(lines).unwrap_or(u64::MAX), Ordering::Relaxed);
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
        /// Batches written on this test's thread (no flusher thread runs in these tests).
        static WRITTEN: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    fn record(batch: &[u8]) -> std::io::Result<()> {
        WRITTEN.with(|w| w.borrow_mut().push(batch.to_vec()));
        Ok(())
    }

    fn refuse(_batch: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }

    fn writer_to(out: fn(&[u8]) -> std::io::Result<()>) -> (BatchedStderr, LogGuard) {
        let writer = BatchedStderr {
            inner: Arc::new(Inner {
                out,
                ..Inner::default()
            }),
        };
        let guard = LogGuard(writer.clone());
        (writer, guard)
    }

    fn written() -> Vec<Vec<u8>> {
        WRITTEN.with(|w| w.borrow_mut().drain(..).collect())
    }

    fn pending(writer: &BatchedStderr) -> usize {
        locked(&writer.inner.pending).len()
    }

    #[test]
    fn a_check_never_writes_lines_leave_whole_and_in_order() {
        let (writer, guard) = writer_to(record);
        writer.make_writer().write_all(b"one\n").unwrap();
        writer.make_writer().write_all(b"two\n").unwrap();
        // A full batch is left to the flusher: the appending thread does not write.
        writer
            .make_writer()
            .write_all(&vec![b'x'; FLUSH_BYTES])
            .unwrap();
        assert!(written().is_empty());
        assert_eq!(pending(&writer), 8 + FLUSH_BYTES);
        writer.flush();
        let batches = written();
        assert_eq!(batches.len(), 1, "one write for the whole batch");
        assert!(batches[0].starts_with(b"one\ntwo\nxxx"));
        writer.flush();
        assert!(written().is_empty(), "nothing pending, nothing written");

        // The guard writes out at shutdown; later lines go out at once.
        writer.make_writer().write_all(b"last\n").unwrap();
        drop(guard);
        assert_eq!(written(), vec![b"last\n".to_vec()]);
        writer.make_writer().write_all(b"after\n").unwrap();
        assert_eq!(written(), vec![b"after\n".to_vec()]);
    }

    #[test]
    fn a_stuck_stderr_never_blocks_a_line_and_overflow_is_dropped_and_counted() {
        let (writer, guard) = writer_to(record);
        // A batch "being written" to a stderr that does not drain holds the write lock.
        let stuck = locked(&writer.inner.writing);
        let line = vec![b'y'; 1024 * 1024];
        for _ in 0..8 {
            writer.make_writer().write_all(&line).unwrap();
        }
        assert_eq!(pending(&writer), MAX_PENDING);
        let before = dropped_lines();
        writer.make_writer().write_all(b"one more\n").unwrap();
        assert_eq!(pending(&writer), MAX_PENDING);
        assert!(dropped_lines() > before);
        drop(stuck);
        drop(guard);
        assert_eq!(written().concat().len(), MAX_PENDING);
    }

    #[test]
    fn lines_stderr_refuses_are_counted() {
        let (writer, _guard) = writer_to(refuse);
        let before = dropped_lines();
        writer.make_writer().write_all(b"a\nb\nc\n").unwrap();
        writer.flush();
        assert!(dropped_lines() >= before + 3);
    }

    #[test]
    fn one_event_is_one_append() {
        let (writer, _guard) = writer_to(record);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(field = "value", "first");
            tracing::info!("second");
        });
        writer.flush();
        let text = String::from_utf8(written().concat()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("first") && lines[1].contains("second"));
    }
}

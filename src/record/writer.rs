//! The records file: decided checks handed over by the check path without waiting, turned
//! into records and written by one thread, in whole lines, to a file rotated by size.
//!
//! The check path only moves what it already owns into a bounded queue; a queue that is full
//! (the disk is slower than the checks) drops the record and counts it
//! (`cedargate_records_total{result="dropped"}`): authorization never waits on a disk.
//!
//! Rotation: once the file holds more than `max_file_bytes`, `<path>.N-1` becomes `<path>.N`
//! … the file becomes `<path>.1`, and a new file starts; `<path>.<max_files>` is the oldest
//! kept. Lines are written whole, several at a time, so no line is ever split between
//! files. A file another process moved or deleted is simply recreated (written by hand
//! rather than with `file-rotate`, whose rotation asserts the files it left are still there
//! and would end the writer on the first `logrotate` or `rm`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use super::{Decided, Record, Redaction};
use crate::config::RecordSettings;
use crate::telemetry::RECORDS_TOTAL;

/// Decided checks waiting to be written at most; more are dropped and counted.
const QUEUE: usize = 4096;
/// Lines written in one call at most, in bytes.
const BATCH_BYTES: usize = 256 << 10;

/// Why records cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot open the records file (`records.path`): {source}; create its directory and make it writable by cedargate", path.display())]
pub struct RecordFileError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

enum Message {
    Record(Box<Decided>),
    /// Everything queued before is written: acknowledge.
    Flush(SyncSender<()>),
}

/// The running writer: hand it decided checks; dropping it (or [`Recorder::flush`]) writes
/// out what is queued.
#[derive(Debug)]
pub struct Recorder {
    queue: SyncSender<Message>,
    sample: f64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Record(_) => "Record",
            Self::Flush(_) => "Flush",
        })
    }
}

impl Recorder {
    /// Opens (or creates) the records file and starts the writer thread.
    pub fn start(settings: &RecordSettings, redaction: Redaction) -> Result<Self, RecordFileError> {
        let file = Rotating::open(settings)?;
        for result in ["written", "dropped", "failed"] {
            metrics::counter!(RECORDS_TOTAL, "result" => result).increment(0);
        }
        let (queue, received) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("cedargate-records".into())
            .spawn(move || write_all(received, file, &redaction))
            .map_err(|source| RecordFileError {
                path: settings.path.clone(),
                source,
            })?;
        Ok(Self {
            queue,
            sample: settings.sample,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Whether this check is recorded (`records.sample`).
    pub fn sampled(&self) -> bool {
        self.sample >= 1.0 || fastrand::f64() < self.sample
    }

    /// Queues a decided check; never waits.
    pub fn record(&self, decided: Decided) {
        match self.queue.try_send(Message::Record(Box::new(decided))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                metrics::counter!(RECORDS_TOTAL, "result" => "dropped").increment(1);
            }
        }
    }

    /// Waits (at most `within`) until every record queued so far is written.
    pub fn flush(&self, within: Duration) -> bool {
        let (done, written) = sync_channel(1);
        if self.queue.send(Message::Flush(done)).is_err() {
            return false;
        }
        written.recv_timeout(within).is_ok()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush(Duration::from_secs(2));
        if let Ok(mut thread) = self.thread.lock() {
            // The thread ends when the queue closes, which dropping `queue` does after this.
            drop(thread.take());
        }
    }
}

fn write_all(received: Receiver<Message>, mut file: Rotating, redaction: &Redaction) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    let mut acks = Vec::new();
    while let Ok(first) = received.recv() {
        let mut next = Some(first);
        let mut lines = 0u64;
        while let Some(message) = next.take() {
            match message {
                Message::Record(decided) => {
                    let record = Record::capture(&decided, redaction);
                    if serde_json::to_writer(&mut batch, &record).is_ok() {
                        batch.push(b'\n');
                        lines += 1;
                    }
                }
                Message::Flush(done) => acks.push(done),
            }
            if batch.len() < BATCH_BYTES {
                next = received.try_recv().ok();
            }
        }
        let result = if lines == 0 || file.write(&batch).is_ok() {
            "written"
        } else {
            "failed"
        };
        metrics::counter!(RECORDS_TOTAL, "result" => result).increment(lines);
        batch.clear();
        for done in acks.drain(..) {
            let _ = done.try_send(());
        }
    }
}

/// The records file and its rotated predecessors.
struct Rotating {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    max_bytes: u64,
    max_files: usize,
}

impl Rotating {
    fn open(settings: &RecordSettings) -> Result<Self, RecordFileError> {
        let mut rotating = Self {
            path: settings.path.clone(),
            file: None,
            written: 0,
            max_bytes: u64::try_from(settings.max_file_bytes).unwrap_or(u64::MAX),
            max_files: settings.max_files,
        };
        rotating.reopen().map_err(|source| RecordFileError {
            path: settings.path.clone(),
            source,
        })?;
        Ok(rotating)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.written = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    /// Appends whole lines, rotating first whenever the next line would take the file past
    /// `max_bytes` (a file holds more only when one line alone is larger).
    fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let mut rest = lines;
        while !rest.is_empty() {
            let room = self.max_bytes.saturating_sub(self.written);
            // The longest run of whole lines that fits, or one line when none does.
            let mut take = 0;
            for (index, byte) in rest.iter().enumerate() {
                if *byte == b'\n' {
                    let end = index + 1;
                    if end as u64 > room && take > 0 {
                        break;
                    }
                    take = end;
                    if end as u64 >= room {
                        break;
                    }
                }
            }
            if take == 0 {
                take = rest.len();
            }
            let (chunk, after) = rest.split_at(take);
            if (self.written > 0 && self.written + chunk.len() as u64 > self.max_bytes)
                || !self.path.exists()
            {
                self.rotate();
            }
            self.append(chunk)?;
            rest = after;
        }
        Ok(())
    }

    fn append(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("closed"))?;
        match file.write_all(chunk) {
            Ok(()) => {
                self.written += chunk.len() as u64;
                Ok(())
            }
            Err(err) => {
                // Opened again on the next batch (a full disk may have room then).
                self.file = None;
                Err(err)
            }
        }
    }

    /// Shifts the rotated files by one and starts a new file; a file missing on the way is
    /// skipped (another process removed it).
    fn rotate(&mut self) {
        self.file = None;
        let _ = std::fs::remove_file(numbered(&self.path, self.max_files));
        for n in (1..self.max_files).rev() {
            let _ = std::fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1));
        }
        let _ = std::fs::rename(&self.path, numbered(&self.path, 1));
        self.written = 0;
    }
}

/// `<path>.<n>`.
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, max_file_bytes: usize, max_files: usize) -> RecordSettings {
        RecordSettings {
            path: dir.join("records.jsonl"),
            max_file_bytes,
            max_files,
            sample: 1.0,
        }
    }

    #[test]
    fn files_rotate_by_size_keep_whole_lines_and_survive_removal() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path(), 100, 2);
        let mut file = Rotating::open(&settings).unwrap();
        let line = |n: usize| format!("{{\"n\":{n:>60}}}\n").into_bytes();
        for n in 0..7 {
            file.write(&line(n)).unwrap();
        }
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        let text = |ns: &[usize]| {
            ns.iter()
                .map(|n| String::from_utf8(line(*n)).unwrap())
                .collect::<String>()
        };
        // 67-byte lines in files of at most 100 bytes: one line a file, the oldest deleted.
        assert_eq!(read(settings.path.clone()), text(&[6]));
        assert_eq!(read(numbered(&settings.path, 1)), text(&[5]));
        assert_eq!(read(numbered(&settings.path, 2)), text(&[4]));
        assert!(
            !numbered(&settings.path, 3).exists(),
            "two rotated files kept"
        );
        // A batch of several lines is split between files at line ends, never past the bound.
        let batch: Vec<u8> = (10..16).flat_map(|n| line(n).into_iter()).collect();
        let small = RecordSettings {
            path: dir.path().join("small.jsonl"),
            max_file_bytes: 140,
            ..settings.clone()
        };
        let mut batched = Rotating::open(&small).unwrap();
        batched.write(&batch).unwrap();
        assert_eq!(read(small.path.clone()), text(&[14, 15]));
        assert_eq!(read(numbered(&small.path, 1)), text(&[12, 13]));
        assert_eq!(read(numbered(&small.path, 2)), text(&[10, 11]));
        // An operator removes every file: the next write starts a new one.
        for p in [
            settings.path.clone(),
            numbered(&settings.path, 1),
            numbered(&settings.path, 2),
        ] {
            std::fs::remove_file(p).unwrap();
        }
        file.write(&line(9)).unwrap();
        assert_eq!(read(settings.path.clone()), text(&[9]));
    }

    #[test]
    fn an_unwritable_path_is_a_start_up_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(&dir.path().join("missing"), 1 << 20, 1);
        let err = Recorder::start(&settings, Redaction::default()).unwrap_err();
        assert!(err.to_string().contains("missing/records.jsonl"), "{err}");
        assert!(err.to_string().contains("records.path"), "{err}");
    }
}

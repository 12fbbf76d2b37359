//! The `records` section: opt-in decision records (README, "Changing policies safely"), the
//! input of every decided check written to rotated JSON-lines files that `cedargate replay`
//! re-decides against another policy set.

use std::path::PathBuf;

use serde::Deserialize;

use super::Problem;

/// Where decision records go and how much disk they may take.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordSettings {
    /// The file records are appended to; rotated files are `<path>.1` … `<path>.<max_files>`.
    pub path: PathBuf,
    /// A file is rotated once it holds more than this many bytes (whole lines stay together).
    pub max_file_bytes: usize,
    /// Rotated files kept besides the current one; the oldest is deleted.
    pub max_files: usize,
    /// Fraction of decided checks recorded, in (0, 1].
    pub sample: f64,
}

/// A file of 64 MiB by default, with four rotated ones: at most 320 MiB on disk.
const DEFAULT_FILE_BYTES: usize = 64 << 20;
const DEFAULT_FILES: usize = 4;
/// A file smaller than one record would rotate on every line.
const MIN_FILE_BYTES: usize = 64 << 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecords {
    path: PathBuf,
    max_file_bytes: Option<usize>,
    max_files: Option<usize>,
    sample: Option<f64>,
}

pub(super) fn build(
    raw: RawRecords,
    base: &std::path::Path,
    problems: &mut Vec<Problem>,
) -> RecordSettings {
    let RawRecords {
        path,
        max_file_bytes,
        max_files,
        sample,
    } = raw;
    if path.as_os_str().is_empty() || path.file_name().is_none() {
        problems.push(Problem {
            field: "records.path".into(),
            value: path.display().to_string(),
            fix: "name the file records are appended to, such as /var/lib/cedargate/records.jsonl",
        });
    }
    let max_file_bytes = match max_file_bytes {
        None => DEFAULT_FILE_BYTES,
        Some(bytes) if (MIN_FILE_BYTES..=super::MAX_COUNT).contains(&bytes) => bytes,
        Some(bytes) => {
            problems.push(Problem {
                field: "records.max_file_bytes".into(),
                value: bytes.to_string(),
                fix: "a file size in bytes of at least 65536, such as 67108864 (64 MiB)",
            });
            DEFAULT_FILE_BYTES
        }
    };
    let max_files = match max_files {
        None => DEFAULT_FILES,
        Some(files) if (1..=1000).contains(&files) => files,
        Some(files) => {
            problems.push(Problem {
                field: "records.max_files".into(),
                value: files.to_string(),
                fix: "how many rotated files to keep besides the current one, from 1 to 1000",
            });
            DEFAULT_FILES
        }
    };
    let sample = fraction(sample, "records.sample", problems);
    RecordSettings {
        path: base.join(path),
        max_file_bytes,
        max_files,
        sample,
    }
}

/// A sampling fraction in (0, 1], 1 when absent.
pub(super) fn fraction(
    value: Option<f64>,
    field: &'static str,
    problems: &mut Vec<Problem>,
) -> f64 {
    match value {
        None => 1.0,
        Some(rate) if rate > 0.0 && rate <= 1.0 => rate,
        Some(rate) => {
            problems.push(Problem {
                field: field.into(),
                value: rate.to_string(),
                fix: "a fraction of checks, above 0 and at most 1 (all)",
            });
            1.0
        }
    }
}

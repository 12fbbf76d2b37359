//! Policy bundles: a policy set as one versioned, self-describing file (README, "Changing
//! policies safely"). A bundle is a gzip'd tar archive of the set's files (`*.cedar`, the
//! `*.cedarschema`, `entities.json`, `routes.yaml`) and a `manifest.json` naming its format,
//! its revision, the set's content version and the SHA-256 of every file; optionally a
//! `manifest.sig` with a signature over the manifest's exact bytes by an Ed25519 or ECDSA
//! P-256 key ([`keys`]).
//!
//! Opening a bundle ([`open`]) is all or nothing: the archive is read within size bounds
//! (a gzip bomb is refused, not inflated), only plain files at its top level with safe names
//! are accepted, each file must be in the manifest with its hash and no other file may be
//! there, the signature must verify when a key is configured (an unsigned bundle is refused
//! then), and the set must load and validate exactly like a directory. Only then is a
//! [`Snapshot`] made; the caller installs it with one atomic swap.

pub mod keys;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Snapshot;
use super::store::{self, PolicyLoadError, SourceFile};

/// The manifest format this cedargate writes and reads.
pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.sig";
/// Bytes a bundle may hold once inflated, and files it may hold.
pub const MAX_BYTES: u64 = 64 << 20;
pub const MAX_FILES: usize = 10_000;

/// What a bundle says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Increases with every bundle of a set: a lower revision than the one in force is a
    /// rollback (refused unless allowed).
    pub revision: u64,
    /// The set's content version (as `cedargate validate` and the metrics show it).
    pub version: String,
    /// When it was built (RFC 3339), for people.
    #[serde(default)]
    pub created: String,
    /// File name → hex SHA-256 of its bytes.
    pub files: BTreeMap<String, String>,
}

/// Why a bundle is refused; each has a `reason` label for the failure metric.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: cannot read the bundle: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a bundle (a gzip'd tar archive): {0}")]
    Archive(String),
    #[error("the bundle is over {MAX_BYTES} bytes or {MAX_FILES} files once unpacked")]
    TooLarge,
    #[error("the bundle holds `{0}`, which is not a plain file at its top level with a safe name")]
    Entry(String),
    #[error("the bundle holds `{0}` twice")]
    Duplicate(String),
    #[error("the bundle has no readable manifest.json: {0}")]
    Manifest(String),
    #[error("manifest format {0} is not one this cedargate reads ({FORMAT})")]
    Format(u32),
    #[error("`{0}` does not have the SHA-256 the manifest gives")]
    Hash(String),
    #[error("`{0}` is in the bundle but not in its manifest")]
    Unlisted(String),
    #[error("`{0}` is in the manifest but not in the bundle")]
    Missing(String),
    #[error("the bundle is not signed, and `public_key` requires a signature")]
    Unsigned,
    #[error("the bundle's signature does not verify with the configured public key")]
    Signature,
    #[error("the bundle's policy set is invalid: {0}")]
    Invalid(#[from] PolicyLoadError),
    #[error("{0}")]
    Key(#[from] keys::KeyError),
}

impl BundleError {
    /// The `reason` label of `cedargate_bundle_failures_total`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Archive(_) | Self::Entry(_) | Self::Duplicate(_) | Self::TooLarge => "archive",
            Self::Manifest(_) | Self::Format(_) => "manifest",
            Self::Hash(_) | Self::Unlisted(_) | Self::Missing(_) => "hash",
            Self::Unsigned => "unsigned",
            Self::Signature | Self::Key(_) => "signature",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// A bundle opened, verified and loaded.
#[derive(Debug)]
pub struct Opened {
    pub manifest: Manifest,
    /// Whether a signature was verified.
    pub signed: bool,
    pub snapshot: Snapshot,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Builds a bundle of the policy set in `dir` (loaded and validated first: an invalid set is
/// never bundled), with `revision`, signed with `key` when given.
pub fn build(
    dir: &Path,
    revision: u64,
    key: Option<&keys::SigningKey>,
) -> Result<Vec<u8>, BundleError> {
    let files = store::read_dir(dir)?;
    let snapshot = store::load_files(files.clone())?;
    let named: Vec<(String, &[u8])> = files
        .iter()
        .map(|f| {
            let name = f
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, f.text.as_bytes())
        })
        .collect();
    let manifest = Manifest {
        format: FORMAT,
        revision,
        version: snapshot.version.to_string(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        files: named
            .iter()
            .map(|(name, bytes)| (name.clone(), sha256_hex(bytes)))
            .collect(),
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|err| BundleError::Manifest(err.to_string()))?;
    let signature = key.map(|k| k.sign(&manifest_bytes)).transpose()?;

    let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut append = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(0);
        archive
            .append_data(&mut header, name, bytes)
            .map_err(|err| BundleError::Archive(err.to_string()))
    };
    append(MANIFEST, &manifest_bytes)?;
    if let Some(signature) = &signature {
        append(SIGNATURE, signature.as_bytes())?;
    }
    for (name, bytes) in &named {
        append(name, bytes)?;
    }
    archive
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(|err| BundleError::Archive(err.to_string()))
}

/// The files of a bundle, unpacked within bounds, by name.
fn unpack(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    let mut gzip = flate2::bufread::GzDecoder::new(bytes);
    let mut archive = tar::Archive::new((&mut gzip).take(MAX_BYTES + 1));
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    let entries = archive
        .entries()
        .map_err(|err| BundleError::Archive(err.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|err| BundleError::Archive(err.to_string()))?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|err| BundleError::Archive(err.to_string()))?;
        let safe = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if entry.header().entry_type() != tar::EntryType::Regular || !safe {
            return Err(BundleError::Entry(crate::text::clip(&name)));
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        total = total.saturating_add(size);
        if total > MAX_BYTES || files.len() >= MAX_FILES {
            return Err(BundleError::TooLarge);
        }
        let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 20));
        entry
            .read_to_end(&mut content)
            .map_err(|err| BundleError::Archive(err.to_string()))?;
        if files.insert(name.clone(), content).is_some() {
            return Err(BundleError::Duplicate(name));
        }
    }
    // Nothing after the archive's end but its zero padding, and nothing after the gzip
    // stream: what `tar` or another reader would see there, cedargate would not load.
    let mut tail = Vec::new();
    archive
        .into_inner()
        .read_to_end(&mut tail)
        .map_err(|err| BundleError::Archive(err.to_string()))?;
    if tail.iter().any(|b| *b != 0) {
        return Err(BundleError::Archive("data after the archive's end".into()));
    }
    if !gzip.into_inner().is_empty() {
        return Err(BundleError::Archive("bytes after the gzip stream".into()));
    }
    Ok(files)
}

/// Reads and verifies a bundle's manifest and files (no policy loading): `files` as they
/// will be loaded, the manifest, and whether a signature was checked.
pub fn verify(
    bytes: &[u8],
    origin: &Path,
    key: Option<&keys::PublicKey>,
) -> Result<(Manifest, Vec<SourceFile>, bool), BundleError> {
    let mut files = unpack(bytes)?;
    let manifest_bytes = files
        .remove(MANIFEST)
        .ok_or_else(|| BundleError::Manifest("missing".into()))?;
    let signature = files.remove(SIGNATURE);
    // The signature first: nothing of an unsigned or forged manifest is believed.
    let signed = match (key, &signature) {
        (Some(_), None) => return Err(BundleError::Unsigned),
        (Some(key), Some(signature)) => {
            key.verify(&manifest_bytes, signature)?;
            true
        }
        (None, _) => false,
    };
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|err| BundleError::Manifest(err.to_string()))?;
    if manifest.format != FORMAT {
        return Err(BundleError::Format(manifest.format));
    }
    if let Some(name) = manifest.files.keys().find(|n| !files.contains_key(*n)) {
        return Err(BundleError::Missing(name.clone()));
    }
    let mut sources = Vec::with_capacity(files.len());
    for (name, content) in files {
        let Some(expected) = manifest.files.get(&name) else {
            return Err(BundleError::Unlisted(name));
        };
        if !expected.eq_ignore_ascii_case(&sha256_hex(&content)) {
            return Err(BundleError::Hash(name));
        }
        let text = String::from_utf8(content).map_err(|_| BundleError::Hash(name.clone()))?;
        sources.push(SourceFile {
            path: origin.join(&name),
            text,
        });
    }
    Ok((manifest, sources, signed))
}

/// Opens a bundle: verified ([`verify`]) and loaded like a directory, or refused whole.
pub fn open(
    bytes: &[u8],
    origin: &Path,
    key: Option<&keys::PublicKey>,
) -> Result<Opened, BundleError> {
    let (manifest, files, signed) = verify(bytes, origin, key)?;
    let snapshot = store::load_files(files)?;
    Ok(Opened {
        manifest,
        signed,
        snapshot,
    })
}

/// Reads and opens the bundle at `path`.
pub fn open_file(path: &Path, key: Option<&keys::PublicKey>) -> Result<Opened, BundleError> {
    let bytes = std::fs::read(path).map_err(|source| BundleError::Read {
        path: path.to_owned(),
        source,
    })?;
    open(&bytes, path, key)
}

/// Opens the bundle a configuration names, with its public key.
pub fn load(source: &crate::config::BundleSource) -> Result<Opened, BundleError> {
    let key = match &source.public_key {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|err| BundleError::Read {
                path: path.clone(),
                source: err,
            })?;
            Some(keys::PublicKey::from_pem(&pem)?)
        }
        None => None,
    };
    open_file(&source.path, key.as_ref())
}

impl BundleError {
    /// As a policy load error naming the bundle: what start-up and `validate` report.
    pub fn into_load_error(self, bundle: &Path) -> PolicyLoadError {
        match self {
            Self::Invalid(inner) => inner,
            other => PolicyLoadError::Invalid {
                problems: vec![
                    super::problem::Problem::in_file(bundle, other.to_string()).hint(
                        "rebuild it with `cedargate bundle build`, and check it with `cedargate bundle inspect`",
                    ),
                ],
            },
        }
    }
}

/// Whether `path` names a bundle rather than a directory (by its name).
pub fn is_bundle(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

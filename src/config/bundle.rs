//! The `policies.bundle` section: the policy set as a bundle file (`cedargate bundle build`),
//! kept on disk, optionally pulled from a bundle server that a fleet of cedargates polls
//! (README, "Changing policies safely").

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Problem;

/// A policy bundle: where it is kept, how it is verified, and where it is pulled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSource {
    /// The bundle file. With `remote`, where each bundle put in force is written (atomically),
    /// and what is served at start-up when the server cannot be reached (`start_from_cache`).
    pub path: PathBuf,
    /// The public key (PEM) its manifest must be signed with; unsigned bundles are refused
    /// when set.
    pub public_key: Option<PathBuf>,
    /// Install a bundle of a lower revision than the one in force (off: a rollback is
    /// refused and counted).
    pub allow_rollback: bool,
    /// The bundle server polled for new revisions, when set.
    pub remote: Option<RemoteBundle>,
}

/// A bundle server: `GET url` with `If-None-Match`, every `poll_interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBundle {
    pub url: String,
    pub poll_interval: Duration,
    /// How long one download may take (connect, headers and body).
    pub timeout: Duration,
    /// Largest download, in bytes.
    pub max_bytes: usize,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub bearer_token_file: Option<PathBuf>,
    /// When the server cannot be reached at start-up, serve the copy at `path` (verified like
    /// a download); off: not ready until the server answers.
    pub start_from_cache: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBundle {
    path: PathBuf,
    url: Option<String>,
    public_key: Option<PathBuf>,
    #[serde(default)]
    allow_rollback: bool,
    poll_interval: Option<String>,
    timeout: Option<String>,
    max_bytes: Option<usize>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    insecure_allow_http: bool,
    start_from_cache: Option<bool>,
}

pub(super) fn build(
    raw: RawBundle,
    base: &std::path::Path,
    problems: &mut Vec<Problem>,
) -> BundleSource {
    let RawBundle {
        path,
        url,
        public_key,
        allow_rollback,
        poll_interval,
        timeout,
        max_bytes,
        ca_file,
        client_cert,
        client_key,
        bearer_token_file,
        insecure_allow_http,
        start_from_cache,
    } = raw;
    let join = |p: Option<PathBuf>| p.map(|p| base.join(p));
    if path.as_os_str().is_empty() {
        problems.push(Problem {
            field: "policies.bundle.path".into(),
            value: String::new(),
            fix: "name the bundle file (with url: where the downloaded bundle is kept)",
        });
    }
    let remote = url.map(|url| {
        if !super::issuers::uri_allowed(&url, insecure_allow_http) {
            problems.push(Problem {
                field: "policies.bundle.url".into(),
                value: url.clone(),
                fix: "use https:// without user:password@; plain http is accepted only to a loopback address with `insecure_allow_http: true`",
            });
        }
        if client_cert.is_some() != client_key.is_some() {
            problems.push(Problem {
                field: "policies.bundle.client_cert".into(),
                value: String::new(),
                fix: "give client_cert and client_key together (PEM files), or neither",
            });
        }
        RemoteBundle {
            url,
            poll_interval: super::duration(
                poll_interval,
                "policies.bundle.poll_interval",
                Duration::from_secs(30),
                problems,
            ),
            timeout: super::duration(
                timeout,
                "policies.bundle.timeout",
                Duration::from_secs(10),
                problems,
            ),
            max_bytes: match max_bytes {
                Some(0) => {
                    problems.push(Problem {
                        field: "policies.bundle.max_bytes".into(),
                        value: "0".into(),
                        fix: "the largest bundle to download, in bytes, such as 16777216",
                    });
                    16 << 20
                }
                bytes => bytes.unwrap_or(16 << 20),
            },
            ca_file: join(ca_file),
            client_cert: join(client_cert),
            client_key: join(client_key),
            bearer_token_file: join(bearer_token_file),
            start_from_cache: start_from_cache.unwrap_or(true),
        }
    });
    BundleSource {
        path: base.join(path),
        public_key: join(public_key),
        allow_rollback,
        remote,
    }
}

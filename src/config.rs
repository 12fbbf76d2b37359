//! Configuration: one YAML file (`cedargate.yaml`), parsed into raw serde structs that reject
//! unknown fields, then turned into validated types by [`Config::from_yaml`].
//!
//! Every problem is reported at once with the file, the field, the value and the fix. Relative
//! paths in the file are resolved against the file's own directory. Without a file,
//! [`Config::default`] serves the example policy set compiled into the binary on 127.0.0.1.
//! This module never reads policies: it only says where they are.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod bundle;
mod decision_log;
mod entity_source;
mod http_service;
mod identity_headers;
mod issuers;
mod otel;
mod records;

pub use bundle::{BundleSource, RemoteBundle};
pub use decision_log::{DecisionLogSettings, NEVER_LOGGED};
pub use entity_source::{EntitySourceSettings, EntityTypeSettings};
pub use http_service::{HttpService, OriginalRequest};
pub use identity_headers::{DRY_RUN_HEADER, IdentityHeaders};
pub use issuers::{AuthSettings, FetchOptions, IssuerConfig, JwksSource, TokenSource, uri_allowed};
pub use otel::OtelSettings;
pub use records::RecordSettings;

/// Why a configuration could not be used; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}:{column}: {message}\n  fix: correct the YAML; every field is listed in README.md, section Configuration"
    )]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: invalid configuration:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One invalid field: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field's path, such as `listen.grpc` or `issuers[1].audiences`.
    pub field: std::borrow::Cow<'static, str>,
    pub value: String,
    pub fix: &'static str,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` = `{}`: {}", self.field, self.value, self.fix)
    }
}

/// The validated configuration the server runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub policies: PolicySource,
    pub limits: Limits,
    pub log: LogFormat,
    pub decision_log: DecisionLogSettings,
    /// The headers an allowed request carries upstream (`identity_headers:`).
    pub identity_headers: IdentityHeaders,
    /// How the HTTP authorization listener (`listen.http`) reads a request.
    pub http_service: HttpService,
    /// Where entities a check needs are fetched from at run time (`entity_source`); off when
    /// absent.
    pub entity_source: Option<EntitySourceSettings>,
    /// A candidate policy set evaluated beside the one in force, never enforced
    /// (`policies.candidate`); off when absent.
    pub candidate: Option<CandidateSettings>,
    /// Decision records for `cedargate replay` (`records:`); off when absent.
    pub records: Option<RecordSettings>,
    /// Evaluate and record every decision, but allow all requests (`dry_run: true`): a new
    /// policy set can be watched on real traffic before it is enforced.
    pub dry_run: bool,
    /// Reload the policy directory when its files change (and on SIGHUP).
    pub watch_policies: bool,
    /// OpenTelemetry span export (`tracing:`), off when absent.
    pub otel: Option<OtelSettings>,
    pub issuers: Vec<IssuerConfig>,
    pub auth: AuthSettings,
    pub peer: PeerSettings,
    pub tls: Option<TlsSettings>,
}

/// Where the gRPC Check service and the admin HTTP listener bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub grpc: GrpcListen,
    pub admin: SocketAddr,
    /// cedargate's own gRPC API (Explain, Status): off unless set. Explain shows which
    /// policies and entities decide a request, so bind it like an admin port (loopback).
    pub api: Option<SocketAddr>,
    /// The HTTP authorization service (Envoy `http_service`, forward-auth proxies): off
    /// unless set. Plaintext HTTP/1.1: bind it to loopback or put a mesh sidecar in front.
    pub http: Option<SocketAddr>,
    /// Unix socket only: peer UIDs (SO_PEERCRED) allowed to connect; empty allows any local
    /// process that can reach the socket (directory 0700, socket 0600: the same user).
    pub unix_allowed_uids: Vec<u32>,
    /// Unix socket only: directory 0750 and socket 0660, for an Envoy of another UID that
    /// shares cedargate's group (e.g. Kubernetes `fsGroup`).
    pub unix_group_access: bool,
}

/// The Check listener: TCP, or a Unix-domain socket (`unix:/run/cedargate/check.sock`), the
/// natural transport for a sidecar next to Envoy (Envoy's `pipe` address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl GrpcListen {
    /// `unix:/absolute/path` or an IP address and port.
    pub fn parse(text: &str) -> Option<Self> {
        match text.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') && path.len() > 1 => {
                Some(Self::Unix(PathBuf::from(path)))
            }
            Some(_) => None,
            None => text.parse().ok().map(Self::Tcp),
        }
    }
}

impl std::fmt::Display for GrpcListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The shadow policy set: evaluated beside the one in force on every check (or a sample),
/// its outcome counted and logged, never enforced.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateSettings {
    /// A directory, or a bundle (a file, or pulled from a bundle server).
    pub source: PolicySource,
    /// Fraction of checks the candidate also decides, in (0, 1].
    pub sample: f64,
}

/// Where the policy set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A directory with `*.cedar`, one `*.cedarschema`, optional `entities.json` and `routes.yaml`.
    Dir(PathBuf),
    /// A bundle file (`cedargate bundle build`).
    Bundle(BundleSource),
    /// The example policy set from `policies/`, compiled into the binary.
    Embedded,
}

/// Bounds on what one Check may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted gRPC message (a CheckRequest), in bytes.
    pub max_request_bytes: usize,
    /// Longest accepted request target (path and query), in bytes; longer is HTTP 414.
    pub max_path_bytes: usize,
    /// Most headers one checked request may carry; more is HTTP 431.
    pub max_headers: usize,
    /// Largest total size of the checked request's header names and values; more is HTTP 431.
    pub max_header_bytes: usize,
    /// Checks evaluated at once; more are refused at once with `UNAVAILABLE`.
    pub max_inflight: usize,
    /// Upper bound on the time one Check may take.
    pub check_timeout: Duration,
    /// On shutdown, how long to wait for open connections to finish before closing them.
    pub drain_timeout: Duration,
    /// On shutdown, how long `/readyz` answers 503 while new checks are still served, so that
    /// load balancers and Kubernetes endpoints stop sending before the listener closes.
    pub shutdown_delay: Duration,
    /// HTTP/2 streams one connection may have open at once (Envoy multiplexes its checks).
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING interval on idle connections; a peer that does not answer within
    /// `keepalive_timeout` is dropped.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Memory the decision cache may hold, in bytes (0 turns it off).
    pub decision_cache_bytes: usize,
    /// Connections the HTTP authorization listener holds open at once; one more is closed at
    /// once (`cedargate_rejected_total{reason="http_connections"}`).
    pub max_http_connections: usize,
    /// Largest request body (Envoy's `with_request_body`) read as `context.request.body`;
    /// a larger one is HTTP 413 `body_too_large`.
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects in such a body; deeper is HTTP 400 `bad_body`.
    pub max_body_depth: usize,
}

/// TLS on cedargate's own gRPC listener (the `tls:` section).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to (mTLS from Envoy to cedargate).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse connections without a client certificate (default true).
    pub require_client_cert: bool,
}

/// Which peer identities cedargate accepts (the `peer:` section).
#[derive(Debug, Clone, Default)]
pub struct PeerSettings {
    /// Allowed SPIFFE trust domains; empty allows any.
    pub trust_domains: Vec<String>,
    /// Read `x-forwarded-client-cert` when no certificate is forwarded. Only safe when the
    /// Envoy in front sanitises the header (`forward_client_cert_details: SANITIZE_SET`).
    pub trust_xfcc: bool,
    /// How many addresses trusted proxies (Envoy included, with `use_remote_address`) append
    /// to `x-forwarded-for` after the client's: the client's address (`context.peer.ip`) is
    /// the entry this many from the right. 0 (the default): the header is not read, and the
    /// address is Envoy's `source.address`, the TCP peer of its downstream connection.
    pub xff_trusted_hops: usize,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 1024 * 1024,
            max_path_bytes: 8 * 1024,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_inflight: 512,
            check_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            max_concurrent_streams: 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            decision_cache_bytes: 32 * 1024 * 1024,
            max_http_connections: 1024,
            max_body_bytes: 64 * 1024,
            max_body_depth: 32,
        }
    }
}

impl Default for Config {
    /// The embedded default: the example policies, gRPC on 127.0.0.1:9191, admin on 127.0.0.1:9192.
    fn default() -> Self {
        Self {
            listen: Listen {
                grpc: GrpcListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 9191))),
                admin: SocketAddr::from(([127, 0, 0, 1], 9192)),
                api: None,
                http: None,
                unix_allowed_uids: Vec::new(),
                unix_group_access: false,
            },
            policies: PolicySource::Embedded,
            limits: Limits::default(),
            log: LogFormat::Json,
            issuers: Vec::new(),
            auth: AuthSettings::default(),
            peer: PeerSettings::default(),
            tls: None,
            decision_log: DecisionLogSettings::default(),
            identity_headers: IdentityHeaders::default(),
            http_service: HttpService::default(),
            entity_source: None,
            candidate: None,
            records: None,
            dry_run: false,
            watch_policies: true,
            otel: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    policies: Option<RawPolicies>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    issuers: Vec<issuers::RawIssuer>,
    #[serde(default)]
    authentication: issuers::RawAuth,
    #[serde(default)]
    peer: RawPeer,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    tracing: otel::RawOtel,
    #[serde(default)]
    identity_headers: identity_headers::RawIdentityHeaders,
    #[serde(default)]
    http_service: http_service::RawHttpService,
    #[serde(default)]
    entity_source: Option<entity_source::RawEntitySource>,
    #[serde(default)]
    records: Option<records::RawRecords>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    client_ca: Option<PathBuf>,
    #[serde(default)]
    require_client_cert: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    #[serde(default)]
    trust_domains: Vec<String>,
    #[serde(default)]
    trust_xfcc: bool,
    #[serde(default)]
    xff_trusted_hops: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    grpc: Option<String>,
    admin: Option<String>,
    api: Option<String>,
    http: Option<String>,
    unix_allowed_uids: Option<Vec<u32>>,
    #[serde(default)]
    unix_group_access: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicies {
    dir: Option<PathBuf>,
    bundle: Option<bundle::RawBundle>,
    watch: Option<bool>,
    candidate: Option<RawCandidate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCandidate {
    dir: Option<PathBuf>,
    bundle: Option<bundle::RawBundle>,
    sample: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_request_bytes: Option<usize>,
    max_path_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_header_bytes: Option<usize>,
    max_inflight: Option<usize>,
    check_timeout: Option<String>,
    drain_timeout: Option<String>,
    shutdown_delay: Option<String>,
    max_concurrent_streams: Option<usize>,
    keepalive_interval: Option<String>,
    keepalive_timeout: Option<String>,
    decision_cache_bytes: Option<usize>,
    #[serde(default)]
    max_http_connections: Option<usize>,
    max_body_bytes: Option<usize>,
    max_body_depth: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    #[serde(default)]
    decisions: decision_log::RawDecisionLog,
}

/// Issuers written as under `issuers:` of a configuration but without `jwks` (policy tests
/// sign their own tokens): parsed, defaulted and checked by the same code as the
/// configuration's, so a test issuer means what the same entry would mean in production.
/// Their key source is a placeholder the caller replaces.
pub fn issuers_without_keys(entries: Vec<yaml_serde::Value>) -> Result<Vec<IssuerConfig>, String> {
    let mut problems = Vec::new();
    let mut built = Vec::new();
    for mut entry in entries {
        if let Some(map) = entry.as_mapping_mut() {
            if map.contains_key("jwks") {
                return Err(
                    "a test issuer has no `jwks`: its tokens are signed with an ephemeral test key"
                        .into(),
                );
            }
            let mut jwks = yaml_serde::Mapping::new();
            jwks.insert("file".into(), "unused".into());
            map.insert("jwks".into(), yaml_serde::Value::Mapping(jwks));
        }
        let raw: issuers::RawIssuer =
            yaml_serde::from_value(entry).map_err(|err| err.to_string())?;
        built.push(issuers::build_issuer(raw, Path::new("."), &mut problems));
    }
    issuers::check_distinct(&built, &mut problems);
    if problems.is_empty() {
        Ok(built)
    } else {
        Err(problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "))
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(path, &text)
    }

    /// Validates configuration text; `path` names it in errors and anchors relative paths.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        // An empty file is the all-defaults configuration, as `{}` is.
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            yaml_serde::from_str(text).map_err(|err| {
                let (line, column) = err.location().map_or((0, 0), |l| (l.line(), l.column()));
                // The position leads the message already: not "at line 9 column 5" again.
                let text = err.to_string();
                let message = text
                    .strip_suffix(&format!(" at line {line} column {column}"))
                    .unwrap_or(&text)
                    .to_owned();
                ConfigError::Parse {
                    path: path.to_owned(),
                    line,
                    column,
                    message,
                }
            })?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        build(raw, base).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// The Check listener's address when it is plaintext TCP beyond loopback: anyone who can
    /// reach it can ask for decisions about any request, principal and certificate it claims.
    /// `serve` warns about it at start-up (a mesh sidecar in front of the port, as under
    /// Istio, is a legitimate reason).
    pub fn plaintext_check_port_exposed(&self) -> Option<SocketAddr> {
        match &self.listen.grpc {
            GrpcListen::Tcp(addr) if self.tls.is_none() && !addr.ip().is_loopback() => Some(*addr),
            _ => None,
        }
    }
}

fn build(raw: RawConfig, base: &Path) -> Result<Config, Vec<Problem>> {
    let RawConfig {
        listen,
        mut policies,
        limits,
        log,
        issuers,
        authentication,
        peer,
        dry_run,
        tracing,
        tls,
        identity_headers,
        http_service,
        entity_source,
        records,
    } = raw;
    let defaults = Config::default();
    let mut problems = Vec::new();

    let RawListen {
        grpc,
        admin,
        api,
        http,
        unix_allowed_uids,
        unix_group_access,
    } = listen;
    let grpc = match grpc {
        None => defaults.listen.grpc.clone(),
        Some(text) => GrpcListen::parse(&text).unwrap_or_else(|| {
            problems.push(Problem {
                field: "listen.grpc".into(),
                value: text,
                fix: "write an IP address and port (127.0.0.1:9191, [::1]:9191) or unix:/absolute/path.sock",
            });
            defaults.listen.grpc.clone()
        }),
    };
    let admin = socket_addr(admin, "listen.admin", defaults.listen.admin, &mut problems);
    let api = api.map(|text| socket_addr(Some(text), "listen.api", admin, &mut problems));
    if let Some(api) = api
        && api.port() != 0
        && (api == admin || grpc == GrpcListen::Tcp(api))
    {
        problems.push(Problem {
            field: "listen.api".into(),
            value: api.to_string(),
            fix: "the API listener needs an address of its own; use another port than listen.grpc and listen.admin",
        });
    }
    let http = http.map(|text| socket_addr(Some(text), "listen.http", admin, &mut problems));
    if let Some(http) = http
        && http.port() != 0
        && (http == admin || Some(http) == api || grpc == GrpcListen::Tcp(http))
    {
        problems.push(Problem {
            field: "listen.http".into(),
            value: http.to_string(),
            fix: "the HTTP authorization listener needs an address of its own; use another port than listen.grpc, listen.admin and listen.api",
        });
    }
    if unix_allowed_uids.is_some() && !matches!(grpc, GrpcListen::Unix(_)) {
        problems.push(Problem {
            field: "listen.unix_allowed_uids".into(),
            value: String::new(),
            fix: "peer UIDs can only be checked on a Unix socket: set listen.grpc to unix:/path or remove this",
        });
    }
    if matches!(grpc, GrpcListen::Unix(_)) && tls.is_some() {
        problems.push(Problem {
            field: "tls".into(),
            value: String::new(),
            fix: "TLS is for the TCP listener; a Unix socket is protected by its file permissions and listen.unix_allowed_uids",
        });
    }
    if grpc == GrpcListen::Tcp(admin) && admin.port() != 0 {
        problems.push(Problem {
            field: "listen.admin".into(),
            value: admin.to_string(),
            fix: "the admin listener needs an address of its own; use another port than listen.grpc",
        });
    }

    let policies_watch = policies.as_ref().and_then(|p| p.watch);
    let candidate = policies
        .as_mut()
        .and_then(|p| p.candidate.take())
        .map(|c| {
            let source = match (c.dir, c.bundle) {
                (Some(dir), None) if !dir.as_os_str().is_empty() => PolicySource::Dir(base.join(dir)),
                (None, Some(raw)) => PolicySource::Bundle(bundle::build(raw, base, &mut problems)),
                _ => {
                    problems.push(Problem {
                        field: "policies.candidate".into(),
                        value: String::new(),
                        fix: "name the candidate set: a directory (dir) or a bundle (bundle: { path, url, public_key }), not both",
                    });
                    PolicySource::Embedded
                }
            };
            CandidateSettings {
                source,
                sample: records::fraction(c.sample, "policies.candidate.sample", &mut problems),
            }
        });
    let policies = match policies {
        Some(RawPolicies {
            dir: Some(_),
            bundle: Some(_),
            ..
        }) => {
            problems.push(Problem {
                field: "policies".into(),
                value: "dir and bundle".into(),
                fix: "name either a directory (policies.dir) or a bundle file (policies.bundle.path), not both",
            });
            PolicySource::Embedded
        }
        Some(RawPolicies {
            bundle: Some(bundle),
            ..
        }) => PolicySource::Bundle(bundle::build(bundle, base, &mut problems)),
        Some(RawPolicies { dir, .. }) if dir.as_ref().is_none_or(|d| d.as_os_str().is_empty()) => {
            problems.push(Problem {
                field: "policies.dir".into(),
                value: String::new(),
                fix: "name the directory that holds the *.cedar files and the schema",
            });
            PolicySource::Embedded
        }
        Some(RawPolicies { dir, .. }) => PolicySource::Dir(base.join(dir.unwrap_or_default())),
        None => PolicySource::Embedded,
    };

    if let (
        PolicySource::Bundle(live),
        Some(CandidateSettings {
            source: PolicySource::Bundle(candidate),
            ..
        }),
    ) = (&policies, &candidate)
        && live.path == candidate.path
    {
        problems.push(Problem {
            field: "policies.candidate.bundle.path".into(),
            value: candidate.path.display().to_string(),
            fix: "give the candidate bundle a path of its own: a downloaded candidate would overwrite the live bundle",
        });
    }

    let RawLimits {
        max_request_bytes,
        max_path_bytes,
        max_headers,
        max_header_bytes,
        max_inflight,
        check_timeout,
        drain_timeout,
        shutdown_delay,
        max_concurrent_streams,
        keepalive_interval,
        keepalive_timeout,
        decision_cache_bytes,
        max_http_connections,
        max_body_bytes,
        max_body_depth,
    } = limits;
    let d = defaults.limits;
    let limits = Limits {
        max_request_bytes: positive(
            max_request_bytes,
            "limits.max_request_bytes",
            d.max_request_bytes,
            &mut problems,
        ),
        max_path_bytes: positive(
            max_path_bytes,
            "limits.max_path_bytes",
            d.max_path_bytes,
            &mut problems,
        ),
        max_headers: positive(
            max_headers,
            "limits.max_headers",
            d.max_headers,
            &mut problems,
        ),
        max_header_bytes: positive(
            max_header_bytes,
            "limits.max_header_bytes",
            d.max_header_bytes,
            &mut problems,
        ),
        max_inflight: positive(
            max_inflight,
            "limits.max_inflight",
            d.max_inflight,
            &mut problems,
        ),
        check_timeout: duration(
            check_timeout,
            "limits.check_timeout",
            d.check_timeout,
            &mut problems,
        ),
        drain_timeout: duration(
            drain_timeout,
            "limits.drain_timeout",
            d.drain_timeout,
            &mut problems,
        ),
        shutdown_delay: duration(
            shutdown_delay,
            "limits.shutdown_delay",
            d.shutdown_delay,
            &mut problems,
        ),
        max_concurrent_streams: u32::try_from(positive(
            max_concurrent_streams,
            "limits.max_concurrent_streams",
            d.max_concurrent_streams as usize,
            &mut problems,
        ))
        .unwrap_or(u32::MAX),
        keepalive_interval: duration(
            keepalive_interval,
            "limits.keepalive_interval",
            d.keepalive_interval,
            &mut problems,
        ),
        keepalive_timeout: duration(
            keepalive_timeout,
            "limits.keepalive_timeout",
            d.keepalive_timeout,
            &mut problems,
        ),
        max_http_connections: positive(
            max_http_connections,
            "limits.max_http_connections",
            d.max_http_connections,
            &mut problems,
        ),
        max_body_bytes: positive(
            max_body_bytes,
            "limits.max_body_bytes",
            d.max_body_bytes,
            &mut problems,
        ),
        max_body_depth: positive(
            max_body_depth,
            "limits.max_body_depth",
            d.max_body_depth,
            &mut problems,
        ),
        // 0 is allowed here: it turns the cache off.
        decision_cache_bytes: match decision_cache_bytes {
            Some(0) => 0,
            entries => positive(
                entries,
                "limits.decision_cache_bytes",
                d.decision_cache_bytes,
                &mut problems,
            ),
        },
    };

    let RawLog { format, decisions } = log;
    let decision_log = decision_log::build(decisions, &mut problems);
    let watch_policies = policies_watch.unwrap_or(true);
    let config = Config {
        listen: Listen {
            grpc,
            admin,
            api,
            http,
            unix_allowed_uids: unix_allowed_uids.unwrap_or_default(),
            unix_group_access,
        },
        policies,
        limits,
        log: format.unwrap_or(defaults.log),
        decision_log,
        identity_headers: identity_headers::build(identity_headers, &mut problems),
        http_service: http_service::build(http_service, &mut problems),
        entity_source: entity_source.map(|raw| entity_source::build(raw, base, &mut problems)),
        candidate,
        records: records.map(|raw| records::build(raw, base, &mut problems)),
        dry_run,
        watch_policies,
        otel: otel::build(tracing, &mut problems),
        issuers: {
            let built: Vec<IssuerConfig> = issuers
                .into_iter()
                .enumerate()
                .map(|(index, raw)| {
                    let first = problems.len();
                    let built = issuers::build_issuer(raw, base, &mut problems);
                    // Say which issuer: `issuers[1].audiences`, not `issuers[].audiences`.
                    for problem in problems.iter_mut().skip(first) {
                        if let Some(rest) = problem.field.strip_prefix("issuers[]") {
                            problem.field = format!("issuers[{index}]{rest}").into();
                        }
                    }
                    built
                })
                .collect();
            issuers::check_distinct(&built, &mut problems);
            built
        },
        auth: issuers::build_auth(authentication, &mut problems),
        peer: {
            let RawPeer {
                trust_domains,
                trust_xfcc,
                xff_trusted_hops,
            } = peer;
            PeerSettings {
                trust_domains,
                trust_xfcc,
                xff_trusted_hops,
            }
        },
        tls: tls.map(
            |RawTls {
                 cert,
                 key,
                 client_ca,
                 require_client_cert,
             }| {
                // Client certificates are required by default; without a CA to check them
                // against, that default would silently accept any client.
                if client_ca.is_none() && require_client_cert != Some(false) {
                    problems.push(Problem {
                        field: "tls.client_ca".into(),
                        value: String::new(),
                        fix: "name the CA bundle that Envoy's client certificate chains to; to accept any TLS client instead (not recommended: anyone who reaches the port can ask for decisions), say `require_client_cert: false`",
                    });
                }
                TlsSettings {
                    cert: base.join(cert),
                    key: base.join(key),
                    client_ca: client_ca.map(|ca| base.join(ca)),
                    require_client_cert: require_client_cert.unwrap_or(true),
                }
            },
        ),
    };
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

fn socket_addr(
    value: Option<String>,
    field: &'static str,
    default: SocketAddr,
    problems: &mut Vec<Problem>,
) -> SocketAddr {
    let Some(value) = value else { return default };
    value.parse().unwrap_or_else(|_| {
        problems.push(Problem {
            field: field.into(),
            value,
            fix: "write an IP address and port, such as 127.0.0.1:9191 or [::1]:9191",
        });
        default
    })
}

pub(crate) fn positive(
    value: Option<usize>,
    field: &'static str,
    default: usize,
    problems: &mut Vec<Problem>,
) -> usize {
    match value {
        Some(0) => {
            problems.push(Problem {
                field: field.into(),
                value: "0".into(),
                fix: "must be at least 1",
            });
            default
        }
        Some(v) if v > MAX_COUNT => {
            problems.push(Problem {
                field: field.into(),
                value: v.to_string(),
                fix: "must be at most 4294967296",
            });
            default
        }
        Some(v) => v,
        None => default,
    }
}

/// Upper bound of every count and size in the configuration: far above any sane setting, and
/// low enough that no later arithmetic (semaphore permits, cache sizing) can overflow.
const MAX_COUNT: usize = 1 << 32;
/// Upper bound of every duration: adding it to `Instant::now()` cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

pub(crate) fn duration(
    value: Option<String>,
    field: &'static str,
    default: Duration,
    problems: &mut Vec<Problem>,
) -> Duration {
    let Some(value) = value else { return default };
    match humantime::parse_duration(&value) {
        Ok(d) if !d.is_zero() && d <= MAX_DURATION => d,
        _ => {
            problems.push(Problem {
                field: field.into(),
                value,
                fix: "write a positive duration of at most a year, such as 250ms, 5s or 1m",
            });
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(Path::new("/etc/cedargate/cedargate.yaml"), text)
    }

    #[test]
    fn a_yaml_error_names_its_position_once() {
        let err = parse("issuers:\n  - issuer: https://idp.test\n    jwks_uri: x\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/cedargate/cedargate.yaml:3:5: "),
            "{err}"
        );
        assert!(err.contains("unknown field `jwks_uri`"), "{err}");
        assert!(!err.contains("at line"), "{err}");
    }

    #[test]
    fn the_http_service_has_an_address_of_its_own() {
        let config = parse(
            "listen:\n  http: 127.0.0.1:9194\nhttp_service:\n  path_prefix: /authz\n  request: forwarded\n",
        )
        .unwrap();
        assert_eq!(config.listen.http, Some(([127, 0, 0, 1], 9194).into()));
        assert_eq!(config.http_service.path_prefix, "/authz");
        assert_eq!(config.http_service.request, OriginalRequest::Forwarded);
        assert_eq!(parse("").unwrap().listen.http, None, "off unless set");
        for clash in ["127.0.0.1:9191", "127.0.0.1:9192"] {
            let err = parse(&format!("listen:\n  http: {clash}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("`listen.http`"), "{err}");
        }
        let err = parse("http_service:\n  request: traefik\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant"), "{err}");
    }

    #[test]
    fn records_and_a_candidate_set_are_opt_in_and_bounded() {
        let config = parse(
            "policies: { dir: live, candidate: { dir: next, sample: 0.25 } }\nrecords: { path: rec/records.jsonl, max_files: 2 }\n",
        )
        .unwrap();
        let candidate = config.candidate.unwrap();
        assert_eq!(
            candidate.source,
            PolicySource::Dir(PathBuf::from("/etc/cedargate/next"))
        );
        assert_eq!(candidate.sample, 0.25);
        let records = config.records.unwrap();
        assert_eq!(
            records.path,
            PathBuf::from("/etc/cedargate/rec/records.jsonl")
        );
        assert_eq!((records.max_files, records.sample), (2, 1.0));
        assert_eq!(records.max_file_bytes, 64 << 20);
        let off = parse("").unwrap();
        assert!(off.candidate.is_none() && off.records.is_none());
        for (text, field) in [
            ("records: { path: r, sample: 0 }", "records.sample"),
            (
                "records: { path: r, max_file_bytes: 10 }",
                "records.max_file_bytes",
            ),
            ("records: { path: r, max_files: 0 }", "records.max_files"),
            (
                "policies: { dir: p, candidate: { dir: c, sample: 2 } }",
                "policies.candidate.sample",
            ),
            (
                "policies: { bundle: { path: b.tar.gz }, candidate: { bundle: { path: b.tar.gz, url: https://b.test/c } } }",
                "policies.candidate.bundle.path",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{text}: {err}");
        }
    }

    #[test]
    fn an_entity_source_names_its_url_types_and_caches() {
        let config = parse(
            "entity_source:\n  url: https://orders.internal/entities\n  bearer_token_file: token\n  types:\n    Order: { ttl: 10s, max_stale: 1m }\n",
        )
        .unwrap();
        let source = config.entity_source.unwrap();
        assert_eq!(source.url, "https://orders.internal/entities");
        assert_eq!(
            source.bearer_token_file,
            Some(PathBuf::from("/etc/cedargate/token")),
            "relative to the file"
        );
        let order = source.types["Order"];
        assert_eq!(order.ttl, Duration::from_secs(10));
        assert_eq!(order.negative_ttl, Duration::from_secs(5), "the default");
        assert_eq!(order.max_stale, Duration::from_secs(60));
        assert_eq!(source.timeout, Duration::from_millis(250));
        assert!(parse("").unwrap().entity_source.is_none(), "off unless set");
        for (text, field) in [
            (
                "url: http://orders.internal/e\n  types: { Order: {} }",
                "entity_source.url",
            ),
            ("url: https://o/e\n  types: {}", "entity_source.types"),
            (
                "url: https://o/e\n  client_cert: c.pem\n  types: { Order: {} }",
                "entity_source.client_cert",
            ),
            (
                "url: https://o/e\n  types: { Order: { max_entries: 0 } }",
                "entity_source.types.Order.max_entries",
            ),
            (
                "url: https://o/e\n  types: { Order: { ttl: forever } }",
                "entity_source.types.Order.ttl",
            ),
        ] {
            let err = parse(&format!("entity_source:\n  {text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{field}`")), "{text}: {err}");
        }
    }

    #[test]
    fn empty_file_is_the_default() {
        let config = parse("").unwrap();
        assert_eq!(config.listen.grpc.to_string(), "127.0.0.1:9191");
        let unix =
            parse("listen:\n  grpc: unix:/run/cedargate/check.sock\n  unix_allowed_uids: [1337]\n")
                .unwrap();
        assert_eq!(
            unix.listen.grpc,
            GrpcListen::Unix(PathBuf::from("/run/cedargate/check.sock"))
        );
        assert_eq!(unix.listen.unix_allowed_uids, [1337]);
        let err = parse("listen:\n  grpc: unix:relative.sock\n  unix_allowed_uids: [1]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`listen.grpc` = `unix:relative.sock`"),
            "{err}"
        );
        assert_eq!(config.policies, PolicySource::Embedded);
        assert_eq!(config.limits.max_inflight, 512);
    }

    #[test]
    fn relative_policy_dir_is_anchored_at_the_file() {
        let config = parse("policies: { dir: policies }").unwrap();
        assert_eq!(
            config.policies,
            PolicySource::Dir(PathBuf::from("/etc/cedargate/policies"))
        );
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let err = parse("listen:\n  grcp: 127.0.0.1:1\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/cedargate/cedargate.yaml:2:"), "{err}");
        assert!(err.contains("unknown field `grcp`"), "{err}");
    }

    #[test]
    fn issuers_may_not_share_a_principal_type() {
        let issuer = |iss: &str| {
            format!(
                "  - issuer: {iss}\n    audiences: [a]\n    jwks: {{ uri: \"http://127.0.0.1:1/k\", insecure_allow_http: true }}\n"
            )
        };
        let text = format!("issuers:\n{}{}", issuer("https://a"), issuer("https://b"));
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("`issuers[].principal_type` = `User`"), "{err}");
        let distinct = text.replacen(
            "audiences: [a]",
            "audiences: [a]\n    principal_type: Partner",
            1,
        );
        assert_eq!(parse(&distinct).unwrap().issuers.len(), 2);
        let reserved = distinct.replace("principal_type: Partner", "principal_type: Workload");
        let err = parse(&reserved).unwrap_err().to_string();
        assert!(
            err.contains("`issuers[].principal_type` = `Workload`"),
            "{err}"
        );
    }

    #[test]
    fn a_plaintext_check_port_beyond_loopback_is_noticed() {
        let exposed = |text: &str| parse(text).unwrap().plaintext_check_port_exposed();
        assert_eq!(exposed(""), None);
        assert_eq!(exposed("listen:\n  grpc: \"[::1]:9191\"\n"), None);
        assert_eq!(exposed("listen:\n  grpc: unix:/run/c.sock\n"), None);
        assert_eq!(
            exposed("listen:\n  grpc: 0.0.0.0:9191\n").map(|a| a.to_string()),
            Some("0.0.0.0:9191".into())
        );
        assert_eq!(
            exposed(
                "listen:\n  grpc: 0.0.0.0:9191\ntls:\n  cert: c.pem\n  key: k.pem\n  client_ca: ca.pem\n"
            ),
            None
        );
    }

    #[test]
    fn limits_are_bounded() {
        let err = parse("limits:\n  max_inflight: 99999999999999999\n  drain_timeout: 1000y\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`limits.max_inflight`"), "{err}");
        assert!(err.contains("`limits.drain_timeout`"), "{err}");
    }

    #[test]
    fn issuers_are_checked() {
        let err = parse(
            r#"
issuers:
  - issuer: https://idp.example
    audiences: [orders]
    jwks: { uri: "http://idp.example/jwks.json" }
  - issuer: https://idp.example
    audiences: [orders]
    jwks: { uri: "http://127.0.0.1:8080/jwks.json" }
    algorithms: [ES256, HS256, none]
  - issuer: http://idp.example
    audiences: []
    jwks: { discovery: true, insecure_allow_http: true }
"#,
        )
        .unwrap_err()
        .to_string();
        for expected in [
            // Each issuer's own problems name it by its index.
            "`issuers[0].jwks.uri` = `http://idp.example/jwks.json`",
            "`issuers[1].jwks.uri` = `http://127.0.0.1:8080/jwks.json`",
            "`issuers[1].algorithms` = `HS256`",
            "`issuers[1].algorithms` = `none`",
            "`issuers[2].issuer` = `http://idp.example`",
            "`issuers[].issuer` = `https://idp.example`",
            "`issuers[2].audiences`",
        ] {
            assert!(err.contains(expected), "{expected} not in {err}");
        }
        let ok = parse(
            "issuers:\n  - issuer: https://idp\n    audiences: [a]\n    jwks: { uri: \"http://127.0.0.1:1/k\", insecure_allow_http: true }\n",
        )
        .unwrap();
        assert_eq!(ok.issuers[0].leeway, Duration::from_secs(5));
        assert_eq!(ok.issuers[0].algorithms.len(), 7);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err =
            parse("listen: { grpc: nowhere }\nlimits: { max_inflight: 0, check_timeout: soon }\n")
                .unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_ref()).collect();
        assert_eq!(
            fields,
            ["listen.grpc", "limits.max_inflight", "limits.check_timeout"]
        );
    }
}

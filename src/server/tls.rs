//! TLS (and mTLS) on cedargate's own gRPC listener, with rustls and aws-lc-rs.
//!
//! Certificates, key and client CA are read from disk at start-up (an unreadable or invalid
//! set stops start-up) and again whenever one of the files changes: each accepted connection
//! first compares the files' modification times, so a renewed certificate (cert-manager, a
//! Kubernetes Secret's symlink swap) serves the next connection without a restart. A reload
//! that fails keeps the last good configuration and logs why. Handshakes run off the accept
//! loop with a timeout; failures are counted in `cedargate_tls_handshake_failures_total`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsSettings;

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(String),
    #[error(
        "tls: client certificates are required but no client_ca names who may present them; set tls.client_ca, or tls.require_client_cert: false to accept any client"
    )]
    NoClientCa,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The current server configuration and the file times it was built from.
#[derive(Debug)]
pub struct ReloadingConfig {
    settings: TlsSettings,
    current: ArcSwap<ServerConfig>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl ReloadingConfig {
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let stamps = stamps(&settings);
        let config = build(&settings)?;
        Ok(Self {
            settings,
            current: ArcSwap::from_pointee(config),
            stamps: Mutex::new(stamps),
        })
    }

    /// The configuration for a new connection, reloaded first if a file changed.
    fn current(&self) -> Arc<ServerConfig> {
        let now = stamps(&self.settings);
        let changed = self.stamps.lock().map(|mut seen| {
            let changed = *seen != now;
            if changed {
                *seen = now;
            }
            changed
        });
        if changed.unwrap_or(false) {
            match build(&self.settings) {
                Ok(config) => {
                    tracing::info!("TLS certificates reloaded");
                    metrics::counter!(crate::telemetry::names::TLS_RELOADS_TOTAL, "result" => "ok")
                        .increment(1);
                    self.current.store(Arc::new(config));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "TLS reload failed; keeping the last good certificates");
                    metrics::counter!(crate::telemetry::names::TLS_RELOADS_TOTAL, "result" => "error")
                        .increment(1);
                }
            }
        }
        self.current.load_full()
    }
}

fn paths(settings: &TlsSettings) -> impl Iterator<Item = &Path> {
    [
        Some(&settings.cert),
        Some(&settings.key),
        settings.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(PathBuf::as_path)
}

fn stamps(settings: &TlsSettings) -> Vec<Option<SystemTime>> {
    paths(settings)
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn file_err(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn build(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let certs = CertificateDer::pem_file_iter(&settings.cert)
        .map_err(file_err(&settings.cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_err(&settings.cert))?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: settings.cert.clone(),
            message: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(file_err(&settings.key))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &settings.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(file_err(ca))? {
                roots
                    .add(cert.map_err(file_err(ca))?)
                    .map_err(|e| TlsError::File {
                        path: ca.clone(),
                        message: e.to_string(),
                    })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if settings.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        // Required certificates without a CA would accept any client: refused.
        None if settings.require_client_cert => return Err(TlsError::NoClientCa),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// TLS handshakes in progress at once; a connection beyond it is closed at once (counted
/// with reason `busy`), so slow or idle handshakes cannot pile up without bound.
const MAX_HANDSHAKES: usize = 256;

/// Accepts TCP connections and yields those whose TLS handshake succeeded.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ReloadingConfig>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (sender, receiver) = mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        while let Some((tcp, _)) = super::next_connection(&sender, || listener.accept()).await {
            let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
                failed(Failure::Busy, "too many handshakes in progress");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config.current());
            let tx = sender.clone();
            tokio::spawn(async move {
                let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(permit);
                match accepted {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(err)) => failed(Failure::Error, &err.to_string()),
                    Err(_) => failed(Failure::Timeout, "timeout"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// Why a TLS connection was not accepted: the `reason` label of
/// `cedargate_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// The handshake failed (no or an untrusted client certificate, a protocol error).
    Error,
    /// It did not finish within the handshake timeout.
    Timeout,
    /// Too many handshakes were in progress.
    Busy,
}

fn failed(failure: Failure, detail: &str) {
    let reason = match failure {
        Failure::Error => "error",
        Failure::Timeout => "timeout",
        Failure::Busy => "busy",
    };
    metrics::counter!(crate::telemetry::names::TLS_HANDSHAKE_FAILURES_TOTAL, "reason" => reason)
        .increment(1);
    tracing::debug!(reason, detail, "TLS handshake failed");
}

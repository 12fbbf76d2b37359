//! Assembles a running cedargate from a [`Config`]: loads the policy set, binds both listeners
//! (port 0 works, so tests and benches run the real server), serves, and shuts down on request.
//! [`build`] returns only once both listeners are bound and the policy set is loaded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::config::{Config, GrpcListen, PolicySource};
use crate::identity::authn::{Authenticator, AuthnError};
use crate::policy::{PolicyLoadError, Snapshot, store};
use crate::reload::{Target, Watched};
use crate::server::check::CheckOptions;
use crate::server::{CheckService, Shared, reflection};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Policy(#[from] PolicyLoadError),
    #[error(transparent)]
    Authn(#[from] AuthnError),
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsError),
    #[error(
        "issuer `{issuer}`: `{entity_type}` (its principal_type or group_type) is not an entity type of the schema; declare it or change the issuer's setting"
    )]
    IssuerType { issuer: String, entity_type: String },
    #[error(
        "entity_source.types: `{0}` is not an entity type of the schema; declare it, or fetch a type the schema has"
    )]
    EntityType(String),
    #[error(transparent)]
    EntitySource(#[from] crate::entities::http::SetupError),
    #[cfg(unix)]
    #[error(transparent)]
    Unix(#[from] crate::server::unix::UnixError),
    #[error("listen.grpc: {0}")]
    UnixUnsupported(String),
    #[error(transparent)]
    Reload(#[from] crate::reload::ReloadError),
    #[error("policies.candidate: {0}")]
    Candidate(#[source] PolicyLoadError),
    #[error(transparent)]
    Records(#[from] crate::record::writer::RecordFileError),
    #[error("policies.bundle: {0}")]
    BundleClient(#[source] crate::http_client::ClientError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("admin server failed: {0}")]
    Admin(#[source] std::io::Error),
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The bound Check listener, before it serves.
enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

/// A running server.
#[derive(Debug)]
pub struct App {
    /// The Check listener's address when it is TCP.
    pub grpc_addr: Option<SocketAddr>,
    /// The Check listener's socket when it is a Unix socket (removed at shutdown).
    pub grpc_socket: Option<crate::server::unix::BoundSocket>,
    pub admin_addr: SocketAddr,
    /// cedargate's own API listener (Explain, Status), when `listen.api` is set.
    pub api_addr: Option<SocketAddr>,
    /// The HTTP authorization listener's address, when `listen.http` is set.
    pub http_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    /// The admin listener stops after the gRPC drain, so `/readyz` answers 503 meanwhile.
    admin_shutdown: watch::Sender<bool>,
    /// Reload the policy directory (and the candidate's) on SIGHUP and, with
    /// `policies.watch`, on file changes.
    reloaders: Vec<crate::reload::Reloader>,
    /// Poll the bundle servers (`policies.bundle.url`, `policies.candidate.bundle.url`).
    pollers: Vec<crate::reload::poll::Poller>,
    /// gRPC health, which follows readiness (`server::health`).
    health: tonic_health::server::HealthReporter,
    health_follower: Option<JoinHandle<()>>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    admin: JoinHandle<std::io::Result<()>>,
    api: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    /// The HTTP authorization service, when `listen.http` is set; it drains with gRPC.
    http: Option<JoinHandle<()>>,
}

/// Installs aws-lc-rs as the process's rustls crypto provider (one TLS stack ships).
/// Idempotent: a provider already installed is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Loads the policy set named by `source`.
pub fn load_policies(source: &PolicySource) -> Result<Snapshot, PolicyLoadError> {
    match source {
        PolicySource::Dir(dir) => store::load_dir(dir),
        PolicySource::Bundle(bundle) => crate::policy::bundle::load(bundle)
            .map(|opened| opened.snapshot)
            .map_err(|err| err.into_load_error(&bundle.path)),
        PolicySource::Embedded => store::load_embedded(),
    }
}

/// Loads policies, binds the listeners and starts serving.
pub async fn build(config: Config) -> Result<App, AppError> {
    // The recorder first: metrics set while loading (the policy version) must reach it.
    crate::telemetry::prometheus();
    // A bundle server: the first bundle (or the copy kept on disk); with neither, a
    // placeholder that allows nothing, and the server is not ready until one arrives.
    let mut remote = None;
    let mut awaiting = false;
    let (snapshot, bundle_revision) = match &config.policies {
        PolicySource::Bundle(
            bundle @ crate::config::BundleSource {
                remote: Some(settings),
                ..
            },
        ) => {
            let fetcher =
                crate::reload::poll::Fetcher::new(settings).map_err(AppError::BundleClient)?;
            let (opened, etag) = crate::reload::poll::first(bundle, &fetcher).await;
            remote = Some((bundle.clone(), fetcher, etag));
            match opened {
                Some(opened) => (opened.snapshot, Some(opened.manifest.revision)),
                None => {
                    awaiting = true;
                    (store::placeholder()?, None)
                }
            }
        }
        PolicySource::Bundle(bundle) => {
            let opened = crate::policy::bundle::load(bundle)
                .map_err(|err| err.into_load_error(&bundle.path))?;
            (opened.snapshot, Some(opened.manifest.revision))
        }
        other => (load_policies(other)?, None),
    };
    // A token's principal and groups must be types the schema knows, or no policy could ever
    // match them.
    let issuer_types = crate::reload::IssuerTypes::of(&config.issuers);
    if let Some((issuer, missing)) = issuer_types.missing(&snapshot).filter(|_| !awaiting) {
        return Err(AppError::IssuerType {
            issuer: issuer.to_owned(),
            entity_type: missing.to_owned(),
        });
    }
    let tls = config
        .tls
        .clone()
        .map(crate::server::tls::ReloadingConfig::load)
        .transpose()?
        .map(Arc::new);
    let entities = match &config.entity_source {
        Some(settings) => {
            if let Some(missing) = settings.types.keys().filter(|_| !awaiting).find(|name| {
                !snapshot
                    .schema
                    .entity_types()
                    .any(|t| &t.to_string() == *name)
            }) {
                return Err(AppError::EntityType(missing.clone()));
            }
            let source = crate::entities::http::HttpSource::new(settings)?;
            Some(crate::entities::cache::EntityCache::new(
                Arc::new(source),
                settings,
            ))
        }
        None => None,
    };
    // The candidate set is loaded and checked like the live one: an invalid candidate at
    // start-up is a configuration error, a later invalid change keeps the last good one.
    // A candidate from a bundle server may not have answered yet: then there is no
    // candidate until its poller installs one.
    let mut candidate_remote = None;
    let candidate = match config.candidate.as_ref().map(|c| &c.source) {
        Some(PolicySource::Bundle(
            bundle @ crate::config::BundleSource {
                remote: Some(settings),
                ..
            },
        )) => {
            let fetcher =
                crate::reload::poll::Fetcher::new(settings).map_err(AppError::BundleClient)?;
            let (opened, etag) = crate::reload::poll::first(bundle, &fetcher).await;
            candidate_remote = Some((bundle.clone(), fetcher, etag));
            opened.map(|o| o.snapshot)
        }
        Some(PolicySource::Bundle(bundle)) => Some(
            crate::policy::bundle::load(bundle)
                .map_err(|err| AppError::Candidate(err.into_load_error(&bundle.path)))?
                .snapshot,
        ),
        Some(PolicySource::Dir(dir)) => {
            Some(crate::policy::store::load_dir(dir).map_err(AppError::Candidate)?)
        }
        Some(PolicySource::Embedded) | None => None,
    };
    if let Some((issuer, missing)) = candidate.as_ref().and_then(|c| issuer_types.missing(c)) {
        return Err(AppError::IssuerType {
            issuer: issuer.to_owned(),
            entity_type: missing.to_owned(),
        });
    }
    let mut options = CheckOptions {
        dry_run: config.dry_run,
        decision_log: config.decision_log.clone(),
        trace_spans: config.otel.is_some(),
        identity_headers: config.identity_headers.clone(),
        entities,
        candidate_sample: config.candidate.as_ref().map_or(0.0, |c| c.sample),
        ..CheckOptions::with_secrets(&config.auth.token_source)
    };
    if let Some(settings) = &config.records {
        let redaction = crate::record::Redaction {
            secret_headers: options.secret_headers.clone(),
            secret_query: options.secret_query.clone(),
            redact: config.decision_log.redact.clone(),
        };
        options.recorder = Some(Arc::new(crate::record::writer::Recorder::start(
            settings, redaction,
        )?));
    }
    let exposed = config.plaintext_check_port_exposed();
    let authn = Authenticator::start(config.issuers, config.auth)?;
    crate::telemetry::policy_loaded(None, &snapshot.version);
    crate::telemetry::policy_warnings(&snapshot);
    let shared = Arc::new(Shared::new(
        snapshot,
        authn,
        config.limits,
        config.peer.clone(),
        options,
    ));
    if let Some(revision) = bundle_revision {
        // A later bundle is judged against it (a rollback is refused).
        shared.bundle_in_force(revision);
    }
    if awaiting {
        shared.await_first_bundle();
    }
    if config.candidate.is_some() {
        crate::server::shadow::register();
    }
    if let Some(candidate) = candidate {
        shared.install_candidate(candidate);
    }

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })
    };
    let local = |l: &TcpListener, addr| {
        l.local_addr()
            .map_err(|source| AppError::Bind { addr, source })
    };
    let (grpc_listener, grpc_addr, grpc_socket) = match &config.listen.grpc {
        GrpcListen::Tcp(addr) => {
            let listener = bind(*addr).await?;
            let bound = local(&listener, *addr)?;
            (Listener::Tcp(listener), Some(bound), None)
        }
        #[cfg(unix)]
        GrpcListen::Unix(path) => {
            let (listener, bound) =
                crate::server::unix::bind(path, config.listen.unix_group_access)?;
            (Listener::Unix(listener), None, Some(bound))
        }
        #[cfg(not(unix))]
        GrpcListen::Unix(_) => {
            return Err(AppError::UnixUnsupported(
                "Unix sockets need a Unix system".into(),
            ));
        }
    };
    let admin_listener = bind(config.listen.admin).await?;
    let admin_addr = local(&admin_listener, config.listen.admin)?;

    let (shutdown, signal) = watch::channel(false);
    let (admin_shutdown, admin_signal) = watch::channel(false);
    let stopped = |mut signal: watch::Receiver<bool>| async move {
        let _ = signal.wait_for(|stop| *stop).await;
    };

    // Not serving until ready (`/readyz`): see `server::health`.
    let (health, health_service) = tonic_health::server::health_reporter();
    crate::server::health::report(&health, false).await;
    let limits = config.limits;
    let check = AuthorizationServer::new(CheckService::new(shared.clone()))
        .max_decoding_message_size(limits.max_request_bytes);
    // The per-check deadline is applied inside the handler (see `server::check::deadline`),
    // so that running out of time is a denied answer rather than a gRPC error.
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .tcp_keepalive(Some(limits.keepalive_interval))
        .add_service(health_service)
        .add_service(reflection::service()?)
        .add_service(reflection::service_v1alpha()?)
        .add_service(check);
    let grpc = match (grpc_listener, tls) {
        (Listener::Tcp(listener), Some(tls)) => tokio::spawn(router.serve_with_incoming_shutdown(
            crate::server::tls::incoming(listener, tls),
            stopped(signal.clone()),
        )),
        (Listener::Tcp(listener), None) => tokio::spawn(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped(signal.clone()),
        )),
        #[cfg(unix)]
        (Listener::Unix(listener), _) => tokio::spawn(router.serve_with_incoming_shutdown(
            crate::server::unix::incoming(listener, config.listen.unix_allowed_uids.clone()),
            stopped(signal.clone()),
        )),
    };

    let mut reloaders = Vec::new();
    let live = match &config.policies {
        PolicySource::Dir(dir) => Some(Watched::Dir(dir.clone(), Target::Live)),
        PolicySource::Bundle(bundle) if bundle.remote.is_none() => {
            Some(Watched::Bundle(bundle.clone(), Target::Live))
        }
        PolicySource::Bundle(_) | PolicySource::Embedded => None,
    };
    let pollers: Vec<_> = [
        (remote, Target::Live),
        (candidate_remote, Target::Candidate),
    ]
    .into_iter()
    .filter_map(|(remote, target)| {
        let (source, fetcher, etag) = remote?;
        Some(crate::reload::poll::Poller::start(
            source,
            fetcher,
            shared.clone(),
            issuer_types.clone(),
            etag,
            target,
        ))
    })
    .collect();
    let candidate = match config.candidate.as_ref().map(|c| &c.source) {
        Some(PolicySource::Dir(dir)) => Some(Watched::Dir(dir.clone(), Target::Candidate)),
        Some(PolicySource::Bundle(bundle)) if bundle.remote.is_none() => {
            Some(Watched::Bundle(bundle.clone(), Target::Candidate))
        }
        _ => None,
    };
    for watched in live.into_iter().chain(candidate) {
        reloaders.push(crate::reload::Reloader::start(
            watched,
            shared.clone(),
            issuer_types.clone(),
            config.watch_policies,
        )?);
    }

    // The API (Explain, Status) has its own listener and stops with the admin listener.
    let (api, api_addr) = match config.listen.api {
        Some(addr) => {
            let listener = bind(addr).await?;
            let bound = local(&listener, addr)?;
            if !bound.ip().is_loopback() {
                tracing::warn!(api_addr = %bound, "the Explain API is reachable beyond loopback: protect it like the admin port");
            }
            let server = tonic::transport::Server::builder()
                .add_service(crate::api::reflection()?)
                .add_service(crate::api::reflection_v1alpha()?)
                .add_service(crate::api::Api::new(shared.clone()).server())
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stopped(admin_signal.clone()),
                );
            (Some(tokio::spawn(server)), Some(bound))
        }
        None => (None, None),
    };

    // The HTTP authorization service decides like Check and stops with it.
    let (http, http_addr) = match config.listen.http {
        Some(addr) => {
            let listener = bind(addr).await?;
            let bound = local(&listener, addr)?;
            if !bound.ip().is_loopback() {
                tracing::warn!(http_addr = %bound, "the HTTP authorization port is plaintext beyond loopback: anyone who can reach it can ask for decisions on any request and identity they claim; bind it to loopback or put a mesh sidecar's mTLS in front of it");
            }
            let renamed: Vec<&String> = config
                .identity_headers
                .names()
                .filter(|name| !name.starts_with(crate::decision::IDENTITY_HEADER_PREFIX))
                .collect();
            if !renamed.is_empty() {
                let names = renamed
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                tracing::warn!(headers = %names, "identity headers renamed outside x-cedargate-*: over the HTTP authorization service, Envoy passes them upstream only when its http_service authorization_response.allowed_upstream_headers lists them; otherwise a client's own copy reaches the upstream. List them there");
            }
            let router = crate::server::http::router(shared.clone(), config.http_service.clone());
            let limits = config.limits;
            let stop = stopped(signal.clone());
            let server = async move {
                crate::server::http::serve(
                    listener,
                    router,
                    &limits,
                    limits.max_http_connections,
                    stop,
                )
                .await;
            };
            (Some(tokio::spawn(server)), Some(bound))
        }
        None => (None, None),
    };

    let admin = axum::serve(admin_listener, crate::admin::router(shared.clone()))
        .with_graceful_shutdown(stopped(admin_signal));
    let admin = tokio::spawn(async move { admin.await });

    shared.ready.store(true, Ordering::Release);
    // Ready now (no issuer, or keys from files): SERVING before `build` returns; else once
    // every issuer's keys are in.
    let health_follower = if shared.is_ready() {
        crate::server::health::report(&health, true).await;
        None
    } else {
        Some(tokio::spawn(crate::server::health::follow(
            shared.clone(),
            health.clone(),
        )))
    };
    if let Some(addr) = exposed {
        tracing::warn!(grpc_addr = %addr, "the Check port is plaintext beyond loopback: anyone who can reach it can ask for decisions on any request and identity they claim; use tls with client_ca, a Unix socket, or a mesh sidecar's mTLS in front of it");
    }
    let grpc_shown = grpc_addr.map_or_else(|| config.listen.grpc.to_string(), |a| a.to_string());
    // Typed fields only: no `Some(…)` in the JSON line when there is no API listener.
    match api_addr {
        Some(api_addr) => {
            tracing::info!(grpc_addr = %grpc_shown, %admin_addr, %api_addr, "cedargate serving");
        }
        None => tracing::info!(grpc_addr = %grpc_shown, %admin_addr, "cedargate serving"),
    }
    if let Some(http_addr) = http_addr {
        tracing::info!(%http_addr, "HTTP authorization service serving");
    }
    Ok(App {
        grpc_addr,
        grpc_socket,
        admin_addr,
        api_addr,
        http_addr,
        shared,
        shutdown,
        admin_shutdown,
        reloaders,
        pollers,
        health,
        health_follower,
        grpc,
        admin,
        api,
        http,
    })
}

impl App {
    /// Turns `/readyz` false, waits `limits.shutdown_delay` while still serving, stops accepting, sends HTTP/2 GOAWAY so clients finish their
    /// in-flight checks, and waits for connections to close; connections still open after
    /// `limits.drain_timeout` (a client that ignores GOAWAY) are closed.
    pub async fn shutdown(self) -> Result<(), AppError> {
        let Self {
            shared,
            shutdown,
            admin_shutdown,
            mut grpc,
            mut admin,
            api,
            http,
            grpc_socket,
            reloaders,
            pollers,
            health,
            health_follower,
            ..
        } = self;
        shared.ready.store(false, Ordering::Release);
        // gRPC health says what `/readyz` says; the follower must not report after this.
        if let Some(follower) = health_follower {
            follower.abort();
            let _ = follower.await;
        }
        crate::server::health::report(&health, false).await;
        for reloader in &reloaders {
            reloader.stop();
        }
        for poller in &pollers {
            poller.stop();
        }
        // Not ready, still serving: give endpoints time to notice before the listener closes.
        tokio::time::sleep(shared.limits.shutdown_delay).await;
        shared.authn.stop();
        let _ = shutdown.send(true);
        let deadline = tokio::time::Instant::now() + shared.limits.drain_timeout;
        match tokio::time::timeout_at(deadline, &mut grpc).await {
            Ok(result) => result??,
            Err(_) => {
                tracing::warn!("drain timeout: closing gRPC connections still open");
                grpc.abort();
            }
        }
        if let Some(mut http) = http {
            match tokio::time::timeout_at(deadline, &mut http).await {
                Ok(result) => result?,
                Err(_) => {
                    tracing::warn!(
                        "drain timeout: closing HTTP authorization connections still open"
                    );
                    http.abort();
                }
            }
        }
        if let Some(socket) = grpc_socket {
            socket.remove();
        }
        // Every check has been answered: the candidate's evaluations finish, and what they
        // queued for the records file is written.
        shared.shadow.drain(std::time::Duration::from_secs(5)).await;
        if let Some(recorder) = &shared.options.recorder {
            recorder.flush(std::time::Duration::from_secs(5));
        }
        let _ = admin_shutdown.send(true);
        match tokio::time::timeout_at(deadline, &mut admin).await {
            Ok(result) => result?.map_err(AppError::Admin)?,
            Err(_) => admin.abort(),
        }
        if let Some(mut api) = api {
            match tokio::time::timeout_at(deadline, &mut api).await {
                Ok(result) => result??,
                Err(_) => api.abort(),
            }
        }
        Ok(())
    }
}

//! `cedargate serve`: load the configuration (or the embedded default), start the server, and
//! stop gracefully on SIGINT or SIGTERM. Start-up errors are printed whole and exit non-zero.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::{Config, GrpcListen, LogFormat, PolicySource};

fn parse_grpc(text: &str) -> Result<GrpcListen, String> {
    GrpcListen::parse(text).ok_or_else(|| "write IP:PORT or unix:/absolute/path".to_owned())
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (YAML). Without it, the embedded default serves the example policies
    /// on 127.0.0.1:9191 (gRPC) and 127.0.0.1:9192 (admin).
    #[arg(long, short, env = "CEDARGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Policy directory; overrides `policies.dir` of the configuration.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// gRPC (Check) listen address (`127.0.0.1:9191` or `unix:/path.sock`); overrides
    /// `listen.grpc`.
    #[arg(long, value_name = "ADDR", value_parser = parse_grpc)]
    pub grpc: Option<GrpcListen>,
    /// Admin (health, metrics) listen address; overrides `listen.admin`.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
    /// Serve cedargate's own gRPC API (Explain, Status) here; overrides `listen.api`.
    /// Off unless set: bind it to loopback.
    #[arg(long, value_name = "ADDR")]
    pub api: Option<std::net::SocketAddr>,
    /// Serve the HTTP authorization service (Envoy `http_service`, forward-auth) here;
    /// overrides `listen.http`. Off unless set: plaintext, bind it to loopback.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Log format; overrides `log.format` of the configuration.
    #[arg(long, value_parser = ["json", "text"])]
    pub log_format: Option<String>,
}

pub fn run(args: ServeArgs) -> ExitCode {
    let ServeArgs {
        config,
        policies,
        grpc,
        admin,
        api,
        http,
        log_format,
    } = args;
    let mut config = match config {
        Some(path) => match Config::load(&path) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("cedargate: {err}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(dir) = policies {
        config.policies = PolicySource::Dir(dir);
    }
    if let Some(addr) = grpc {
        config.listen.grpc = addr;
    }
    if let Some(addr) = admin {
        config.listen.admin = addr;
    }
    if api.is_some() {
        config.listen.api = api;
    }
    if http.is_some() {
        config.listen.http = http;
    }
    match log_format.as_deref() {
        Some("text") => config.log = LogFormat::Text,
        Some("json") => config.log = LogFormat::Json,
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cedargate: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async move {
        // The OTLP exporter needs the runtime, so logging starts inside it.
        let tracing = config
            .otel
            .as_ref()
            .map(crate::telemetry::otel::Tracing::start)
            .transpose()
            .map_err(|err| err.to_string())?;
        // Held to the end: dropping it writes out the buffered log lines.
        let _log = crate::telemetry::init_logging(config.log, tracing.as_ref());
        let result = serve(config).await.map_err(|err| err.to_string());
        if let Some(tracing) = &tracing {
            tracing.shutdown();
        }
        result
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cedargate: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), crate::app::AppError> {
    // Without a policy directory there is no reloader to take SIGHUP, and its default action
    // would end the process: answer it with a log line instead (registered before serving).
    #[cfg(unix)]
    let _hangup = matches!(config.policies, PolicySource::Embedded)
        .then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok())
        .flatten()
        .map(|mut hangup| {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::warn!("SIGHUP: nothing to reload: the built-in example policy set is in force (name a directory in policies.dir to reload from it)");
                }
            })
        });
    let app = crate::app::build(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight checks");
    app.shutdown().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

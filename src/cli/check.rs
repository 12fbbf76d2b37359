//! `cedargate check`: decides one request and shows why — the decision, the Cedar request that
//! was built (principal, action, resource, context, entities), the determining policies and
//! evaluation errors. Offline against a policy directory (token claims are signed with an
//! ephemeral test key), or against a running server's Explain API (`--server`; a raw token
//! only, since the server trusts only its real issuers). Exit code 0 on allow, 1 on a denial,
//! 2 when the request could not be decided.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use prost::Message;
use serde_json::{Value, json};

use super::case::{Case, CaseError, PeerSpec};
use super::offline::{Offline, Settings};
use crate::api::pb;
use crate::config::PolicySource;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The request as JSON (a file, or `-` for stdin), in the shape of a test case:
    /// `{"request": {"method", "path", "headers"}, "token": {claims}, "peer": {…}}`.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["path", "host", "headers", "claims", "issuer", "token", "spiffe_id", "certificate"]
    )]
    pub json: Option<PathBuf>,
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// The path with its query.
    #[arg(long)]
    pub path: Option<String>,
    #[arg(long)]
    pub host: Option<String>,
    /// A request header, `name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Token claims as JSON, signed offline with the ephemeral test key (not with `--server`:
    /// a running server trusts only its real issuers; pass `--token`).
    #[arg(long, value_name = "JSON", conflicts_with_all = ["token", "server"])]
    pub claims: Option<String>,
    /// The test issuer that signs `--claims` (by its `iss`).
    #[arg(long, conflicts_with = "server")]
    pub issuer: Option<String>,
    /// A token sent as it is.
    #[arg(long)]
    pub token: Option<String>,
    /// The peer's SPIFFE ID (Envoy's `source.principal`).
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<String>,
    /// The peer's certificate (PEM file).
    #[arg(long, value_name = "FILE")]
    pub certificate: Option<PathBuf>,
    /// Policy directory (offline; default `policies.dir` of `--config`, else `./policies`).
    #[arg(long, conflicts_with = "server")]
    pub policies: Option<PathBuf>,
    /// Configuration whose issuers and settings apply offline.
    #[arg(long, short, conflicts_with = "server")]
    pub config: Option<PathBuf>,
    /// Ask a running cedargate's Explain API instead (`listen.api`, e.g. 127.0.0.1:9193).
    #[arg(long, value_name = "ADDR")]
    pub server: Option<String>,
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    pub format: String,
}

/// Why a request could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum CheckCliError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Case(#[from] CaseError),
    #[error(transparent)]
    Offline(#[from] super::offline::OfflineError),
    #[error("cannot reach the Explain API at {addr}: {message}")]
    Server { addr: String, message: String },
}

pub fn run(args: CheckArgs) -> ExitCode {
    let format = args.format.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cedargate check: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(decide(args)) {
        Ok(response) => {
            if format == "json" {
                say!("{}", response_json(&response));
            } else {
                print_text(&response);
            }
            if response.outcome == i32::from(pb::Outcome::Allow) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("cedargate check: {err}");
            ExitCode::from(2)
        }
    }
}

/// The case the arguments describe.
fn case(args: &CheckArgs) -> Result<(Case, PathBuf), CheckCliError> {
    if let Some(source) = &args.json {
        let text = if source.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(source)
        }
        .map_err(|err| CheckCliError::Input(format!("{}: {err}", source.display())))?;
        let case: Case = serde_json::from_str(&text)
            .map_err(|err| CheckCliError::Input(format!("{}: {err}", source.display())))?;
        let base = source
            .parent()
            .filter(|_| source.as_os_str() != "-")
            .unwrap_or(Path::new("."));
        return Ok((case, base.to_owned()));
    }
    let path = args.path.clone().ok_or_else(|| {
        CheckCliError::Input(
            "give the request with --path (and --method, --header) or --json".into(),
        )
    })?;
    let mut case = Case::default();
    case.request.method.clone_from(&args.method);
    case.request.path = path;
    if let Some(host) = &args.host {
        case.request.host.clone_from(host);
    }
    for header in &args.headers {
        let (name, value) = header.split_once(':').ok_or_else(|| {
            CheckCliError::Input(format!("header `{header}`: write `name: value`"))
        })?;
        case.request
            .headers
            .insert(name.trim().to_owned(), value.trim().to_owned());
    }
    case.token = args
        .claims
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|err| CheckCliError::Input(format!("--claims is not JSON: {err}")))?;
    case.issuer.clone_from(&args.issuer);
    case.raw_token.clone_from(&args.token);
    if args.spiffe_id.is_some() || args.certificate.is_some() {
        case.peer = Some(PeerSpec {
            spiffe_id: args.spiffe_id.clone(),
            certificate: args.certificate.as_ref().map(|p| p.display().to_string()),
            address: None,
        });
    }
    Ok((case, PathBuf::from(".")))
}

async fn decide(args: CheckArgs) -> Result<pb::ExplainResponse, CheckCliError> {
    let (case, base) = case(&args)?;
    if let Some(addr) = &args.server {
        let request = case.build(&base, None)?;
        return explain_remote(addr, request).await;
    }
    let settings = args
        .config
        .as_deref()
        .map(Settings::from_config)
        .transpose()
        .map_err(|err| CheckCliError::Input(err.to_string()))?
        .unwrap_or_default();
    let source = args
        .policies
        .clone()
        .map(PolicySource::Dir)
        .or_else(|| settings.policies.clone())
        .unwrap_or_else(|| PolicySource::Dir(PathBuf::from("policies")));
    let offline = Offline::new(&source, &settings, None)?;
    for difference in offline.differences() {
        eprintln!("note: {difference}");
    }
    let request = case.build(&base, Some(&offline))?;
    let explained = offline.explain(request).await;
    Ok(crate::api::explain_response(
        &explained,
        &offline.shared.options,
    ))
}

async fn explain_remote(
    addr: &str,
    request: envoy_types::pb::envoy::service::auth::v3::CheckRequest,
) -> Result<pb::ExplainResponse, CheckCliError> {
    let server_err = |message: String| CheckCliError::Server {
        addr: addr.to_owned(),
        message,
    };
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let channel = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|err| server_err(err.to_string()))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|err| server_err(err.to_string()))?;
    let mut client = pb::authorizer_service_client::AuthorizerServiceClient::new(channel);
    client
        .explain(pb::ExplainRequest {
            check_request: request.encode_to_vec(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| server_err(format!("{:?}: {}", status.code(), status.message())))
}

fn outcome_name(response: &pb::ExplainResponse) -> &'static str {
    match pb::Outcome::try_from(response.outcome) {
        Ok(pb::Outcome::Allow) => "allow",
        Ok(pb::Outcome::Unauthenticated) => "unauthenticated",
        _ => "deny",
    }
}

/// The Explain answer as JSON, the context and entities embedded as JSON values.
pub fn response_json(response: &pb::ExplainResponse) -> Value {
    let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    json!({
        "decision": outcome_name(response),
        "reason": response.reason,
        "message": response.message,
        "http_status": (response.http_status != 0).then_some(response.http_status),
        "enforced": response.enforced,
        "request_id": response.request_id,
        "policy_version": response.policy_version,
        "determining_policies": response.determining_policies,
        "errors": response.errors.iter().map(|e| json!({"policy_id": e.policy_id, "message": e.message})).collect::<Vec<_>>(),
        "cedar_request": response.cedar_request.as_ref().map(|c| json!({
            "principal": c.principal,
            "action": c.action,
            "resource": c.resource,
            "context": parse(&c.context_json),
            "entities": parse(&c.entities_json),
        })),
        "headers": response.headers.iter().map(|h| (h.name.clone(), Value::String(h.value.clone()))).collect::<serde_json::Map<_, _>>(),
        "headers_to_remove": response.headers_to_remove,
    })
}

fn print_text(response: &pb::ExplainResponse) {
    let status = match response.http_status {
        0 => String::new(),
        s => format!(", HTTP {s}"),
    };
    say!(
        "decision: {} ({}{status}){}",
        outcome_name(response),
        response.reason,
        if response.enforced {
            ""
        } else {
            " [dry-run: not enforced]"
        }
    );
    if !response.message.is_empty() {
        say!("why: {}", response.message);
    }
    say!("policy set: {}", response.policy_version);
    if !response.determining_policies.is_empty() {
        say!(
            "determining policies: {}",
            response.determining_policies.join(", ")
        );
    }
    for error in &response.errors {
        say!(
            "evaluation error in `{}`: {}",
            error.policy_id,
            error.message
        );
    }
    match &response.cedar_request {
        Some(call) => {
            let pretty = |text: &str| {
                serde_json::from_str::<Value>(text)
                    .and_then(|v| serde_json::to_string_pretty(&v))
                    .unwrap_or_else(|_| text.to_owned())
            };
            say!("cedar request:");
            say!("  principal: {}", call.principal);
            say!("  action:    {}", call.action);
            say!("  resource:  {}", call.resource);
            say!(
                "  context:   {}",
                pretty(&call.context_json).replace('\n', "\n  ")
            );
            say!(
                "  entities:  {}",
                pretty(&call.entities_json).replace('\n', "\n  ")
            );
        }
        None => say!("cedar request: none (refused before one was built)"),
    }
    for header in &response.headers {
        say!("header: {}: {}", header.name, header.value);
    }
    for name in &response.headers_to_remove {
        say!("header removed: {name}");
    }
}

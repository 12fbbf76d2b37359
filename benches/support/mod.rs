//! Shared by the load and Envoy benchmarks: the fixture (a generated 100-policy set, an ES256
//! issuer, the benchmark request), the two servers under test as child processes (the real
//! `cedargate` binary, and the calling bench binary re-executed as a no-op Check server), and
//! how to reach them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cedargate::testutil::jwt::{TestKey, now};
use cedargate::testutil::{check, policygen};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tonic::transport::{Channel, Endpoint, Uri};

const ROLE: &str = "CEDARGATE_BENCH_ROLE";
const LISTEN: &str = "CEDARGATE_BENCH_LISTEN";
pub const ISSUER: &str = "https://idp.bench";

/// Call first in `main`: when this process was started as the no-op server, serves and
/// returns true.
pub fn run_role() -> bool {
    if std::env::var(ROLE).as_deref() == Ok("noop") {
        noop_server();
        return true;
    }
    false
}

/// The driver's runtime: multi-threaded, one worker per core, like the servers'.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The median of measured values (of rounds; the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "no rounds were measured");
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// p50, p99 and p99.9 (nearest rank) of latencies in nanoseconds, in µs.
pub fn percentiles(nanos: &mut [u64]) -> [f64; 3] {
    assert!(!nanos.is_empty(), "no call completed");
    nanos.sort_unstable();
    let rank = |p: f64| {
        let rank = (nanos.len() as f64 * p).ceil() as usize;
        nanos[rank.max(1) - 1] as f64 / 1000.0
    };
    [rank(0.50), rank(0.99), rank(0.999)]
}

/// An environment setting, or its default; a value that does not parse stops the bench
/// naming the variable.
pub fn setting<T: std::str::FromStr>(name: &str, default: &str) -> T
where
    T::Err: std::fmt::Display,
{
    let text = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    text.parse()
        .unwrap_or_else(|e| panic!("{name}={text:?}: {e}"))
}

/// A comma-separated list setting.
pub fn list_setting<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T>
where
    T::Err: std::fmt::Display,
{
    let text = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or_else(|e| panic!("{name}: {s:?}: {e}")))
        .collect()
}

/// The allow-log setting the servers run with, for reports.
pub fn allow_log() -> String {
    std::env::var("CEDARGATE_BENCH_ALLOW_LOG").unwrap_or_else(|_| "1.0 (default)".to_owned())
}

/// `target/bench/` (or under `CARGO_TARGET_DIR`), created: where the CSV results go.
pub fn results_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The policy directory, key, configuration and request shared by all rounds.
pub struct Fixture {
    pub request: CheckRequest,
    pub token: String,
    pub jwks: String,
}

impl Fixture {
    pub fn write(dir: &Path) -> Self {
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        policygen::write(&policies, 100).unwrap();
        let key = TestKey::generate(Algorithm::ES256, "bench");
        let jwks = json!({ "keys": [key.jwk] }).to_string();
        std::fs::write(dir.join("jwks.json"), &jwks).unwrap();
        let token = key.sign(&bench_claims());
        let request = bench_request(&token);
        Self {
            request,
            token,
            jwks,
        }
    }
}

/// The benchmark check: user u0 reads `/svc0/items/item0` (allowed by policy `p0`) with a
/// bearer token and the headers a browser request through Envoy carries.
pub fn bench_request(token: &str) -> CheckRequest {
    bench_request_at(token, "/svc0/items/item0")
}

/// [`bench_request`] for another path (another item: another decision-cache key).
pub fn bench_request_at(token: &str, path: &str) -> CheckRequest {
    check("GET", path)
        .header("x-tenant", "t0")
        .header("accept-encoding", "gzip, deflate, br")
        .header("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")
        .bearer(token)
        .build()
}

/// Claims of the benchmark token (valid for an hour: longer than any run).
pub fn bench_claims() -> serde_json::Value {
    let now = now();
    json!({
        "iss": ISSUER, "aud": "orders", "sub": "u0", "groups": ["g0"],
        "iat": now, "exp": now + 3600,
    })
}

fn config(dir: &Path, grpc: &str) -> PathBuf {
    // `CEDARGATE_BENCH_ALLOW_LOG=0.1` samples the allow log (default: every allow, as shipped).
    let log = std::env::var("CEDARGATE_BENCH_ALLOW_LOG")
        .map(|ratio| format!("log:\n  decisions:\n    sample_allow: {ratio}\n"))
        .unwrap_or_default();
    // `CEDARGATE_BENCH_DECISION_CACHE=0` turns the decision cache off: every check evaluated,
    // the cost of a stream of distinct requests.
    let limits = std::env::var("CEDARGATE_BENCH_DECISION_CACHE")
        .map(|entries| format!("limits:\n  decision_cache_bytes: {entries}\n"))
        .unwrap_or_default();
    let path = dir.join(format!(
        "cedargate-{}.yaml",
        grpc.replace(['/', ':', '.'], "_")
    ));
    std::fs::write(
        &path,
        format!(
            "listen:\n  grpc: {grpc}\n  admin: 127.0.0.1:0\n\
             policies:\n  dir: policies\n  watch: false\n\
             issuers:\n  - issuer: {ISSUER}\n    audiences: [orders]\n    jwks: {{ file: jwks.json }}\n    \
             algorithms: [ES256]\n    principal_type: User\n    groups_claim: groups\n{log}{limits}"
        ),
    )
    .unwrap();
    path
}

/// A server process under test and how to reach it.
pub struct Server {
    pub name: &'static str,
    child: Child,
    pub target: Target,
}

#[derive(Clone)]
pub enum Target {
    Tcp(String),
    Unix(PathBuf),
}

impl Server {
    pub fn noop(dir: &Path, transport: &str) -> Self {
        let listen = listen_on(dir.join("noop/check.sock"), transport);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, "noop")
            .env(LISTEN, listen)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("no-op server did not start: {line:?}"));
        Self {
            name: "baseline",
            child,
            target: target(addr),
        }
    }

    pub fn cedargate(dir: &Path, transport: &str) -> Self {
        let grpc = listen_on(dir.join("cedargate/check.sock"), transport);
        // `CEDARGATE_BENCH_BIN`: another cedargate build to measure (an A/B comparison).
        let bin = std::env::var_os("CEDARGATE_BENCH_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_cedargate").into());
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(config(dir, &grpc))
            // The readiness line is an info line: an inherited RUST_LOG must not hide it.
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut log = BufReader::new(child.stderr.take().unwrap());
        let addr = loop {
            let mut line = String::new();
            let read = log.read_line(&mut line).unwrap();
            assert!(read > 0, "cedargate exited before serving");
            let value: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("cedargate did not start: {line}"));
            if value["message"] == "cedargate serving" {
                break value["grpc_addr"].as_str().unwrap().to_owned();
            }
            assert!(value["level"] != "ERROR", "cedargate failed: {line}");
        };
        // Drain the decision log (bytes, no per-line work) so the server never blocks on a
        // full pipe, as a container runtime reading stderr would.
        std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
        Self {
            name: "cedargate",
            child,
            target: target(&addr),
        }
    }

    /// utime + stime of the process so far.
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which may hold spaces) start at field 3 (state).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / clock_ticks())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The listen address for `transport` (`tcp` or `unix`).
fn listen_on(socket: PathBuf, transport: &str) -> String {
    match transport {
        "unix" => format!("unix:{}", socket.display()),
        "tcp" => "127.0.0.1:0".to_owned(),
        other => panic!("transport {other:?}: use tcp or unix"),
    }
}

fn target(addr: &str) -> Target {
    match addr.strip_prefix("unix:") {
        Some(path) => Target::Unix(PathBuf::from(path)),
        None => Target::Tcp(format!("http://{addr}")),
    }
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf CLK_TCK (ticks of /proc/<pid>/stat)");
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("getconf CLK_TCK printed {text:?}"))
    })
}

pub async fn connect(target: &Target) -> Channel {
    match target.clone() {
        Target::Tcp(uri) => Endpoint::from_shared(uri)
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap(),
        Target::Unix(path) => Endpoint::from_static("http://cedargate.local")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap(),
    }
}

/// The baseline: answers every Check with OK and an empty OkHttpResponse.
pub struct Noop;

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(RpcStatus {
                code: 0,
                ..Default::default()
            }),
            http_response: Some(
                envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse::OkResponse(
                    OkHttpResponse::default(),
                ),
            ),
            ..Default::default()
        }))
    }
}

fn noop_server() {
    let listen = std::env::var(LISTEN).unwrap();
    let runtime = runtime();
    runtime.block_on(async move {
        let router =
            tonic::transport::Server::builder().add_service(AuthorizationServer::new(Noop));
        if let Some(path) = listen.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            announce(&format!("unix:{}", path.display()));
            router
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
                .unwrap();
        } else {
            let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
            announce(&listener.local_addr().unwrap().to_string());
            router
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                )
                .await
                .unwrap();
        }
    });
}

fn announce(addr: &str) {
    let mut out = std::io::stdout();
    writeln!(out, "ready {addr}").unwrap();
    out.flush().unwrap();
}

/// This process's resident memory (`VmRSS` of `/proc/self/status`), in KiB; 0 when unknown.
pub fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

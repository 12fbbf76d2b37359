//! End to end with a real Envoy 1.40 running the shipped configurations (`deploy/envoy/`), a
//! real cedargate, a recording upstream and a real HTTP client, all on 127.0.0.1: Envoy
//! honours cedargate's allow (with identity headers, without the token), 401, 403, mTLS
//! workload identity and key rotation; and fails closed while cedargate is down.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use cedargate::config::{Config, PolicySource};
use cedargate::decision::{PEER_HEADER, PRINCIPAL_HEADER};
use cedargate::testutil::jwt::{JwksServer, TestKey, claims};
use cedargate::testutil::pki::{TestCa, TestCert};
use cedargate::testutil::{CHECKOUT, FRONTEND, TestServer, test_config, test_issuer};
use jsonwebtoken::Algorithm;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::envoy::{self, Envoy, render};
use support::upstream::Upstream;

const ISS: &str = "https://idp.test";
const LOCAL: &str = "deploy/envoy/envoy-local.yaml";
const MTLS: &str = "deploy/envoy/envoy.yaml";
const UDS: &str = "deploy/envoy/envoy-uds.yaml";
const HTTP: &str = "deploy/envoy/envoy-http.yaml";

/// Shipped ports and certificate paths, as the shipped configurations spell them.
const LISTEN_LOCAL: u64 = 10000;
const LISTEN_MTLS: u64 = 8443;
const CEDARGATE: u64 = 9191;
const CEDARGATE_HTTP: u64 = 9194;
const UPSTREAM: u64 = 8080;
const ADMIN: u64 = 9901;

/// The shipped ports mapped for a test: Envoy's own listeners and admin on port 0 (Envoy
/// reports what it bound), cedargate and the upstream where they listen.
fn ports(cedargate: Option<u16>, upstream: &Upstream) -> HashMap<u64, u16> {
    let mut ports = HashMap::from([
        (LISTEN_LOCAL, 0),
        (LISTEN_MTLS, 0),
        (UPSTREAM, upstream.port),
        (ADMIN, 0),
    ]);
    if let Some(port) = cedargate {
        ports.insert(CEDARGATE, port);
    }
    ports
}

/// Envoy on a shipped configuration, in front of `cedargate_port` and `upstream`.
async fn envoy_for(
    shipped: &str,
    cedargate_port: u16,
    upstream: &Upstream,
    files: &HashMap<&str, PathBuf>,
) -> (Envoy, u16) {
    let config = render(shipped, &ports(Some(cedargate_port), upstream), files);
    let envoy = Envoy::start(&config).await;
    let port = envoy.port();
    (envoy, port)
}

/// Certificates for the mTLS front proxy, written where the rendered configuration says.
struct Pki {
    ca: TestCa,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let ca = TestCa::new("shop CA");
        let dir = tempfile::tempdir().unwrap();
        let server = ca.issue(&[], &["envoy.test"]);
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), &server.pem).unwrap();
        std::fs::write(dir.path().join("server-key.pem"), &server.key_pem).unwrap();
        Self { ca, dir }
    }

    fn files(&self) -> HashMap<&'static str, PathBuf> {
        ["ca.pem", "server.pem", "server-key.pem"]
            .into_iter()
            .map(|name| {
                let shipped: &'static str = match name {
                    "ca.pem" => "/etc/envoy/certs/ca.pem",
                    "server.pem" => "/etc/envoy/certs/server.pem",
                    _ => "/etc/envoy/certs/server-key.pem",
                };
                (shipped, self.dir.path().join(name))
            })
            .collect()
    }

    /// An HTTPS client trusting the CA, presenting `cert` if given.
    fn client(&self, cert: Option<&TestCert>, port: u16) -> reqwest::Client {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca.pem().as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let mut tls = match cert {
            Some(cert) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.pem.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve("envoy.test", ([127, 0, 0, 1], port).into())
            .build()
            .unwrap()
    }
}

fn http_client() -> reqwest::Client {
    cedargate::app::install_crypto_provider();
    reqwest::Client::new()
}

#[test]
fn shipped_envoy_configs_pass_envoy_validate() {
    let pki = Pki::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy");
    let mut validated = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let shipped = format!(
            "deploy/envoy/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        // Ports stay as shipped; only certificate files point at generated ones.
        let config = render(&shipped, &HashMap::new(), &pki.files());
        if let Err(err) = envoy::validate(&config) {
            panic!("{shipped} does not pass envoy --mode validate:\n{err}");
        }
        validated += 1;
    }
    assert!(validated >= 4, "every shipped configuration was validated");
}

#[tokio::test]
async fn envoy_enforces_cedargate_decisions() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut config: Config = test_config(PolicySource::Embedded);
    config.issuers = vec![test_issuer(ISS, &jwks.uri())];
    config.auth.forward_token = false;
    // Every unknown kid may ask for a fetch at once, so the rotation below runs without waits.
    config.auth.unknown_kid_refetch = std::time::Duration::from_millis(1);
    let server = TestServer::with_config(config).await;
    server.ready().await;
    let upstream = Upstream::start().await;
    let (envoy, port) =
        envoy_for(LOCAL, server.grpc_addr().port(), &upstream, &HashMap::new()).await;
    let client = http_client();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    // Allowed: reaches the upstream with cedargate's identity headers, a forged one replaced,
    // and without the raw token (forward_token: false).
    let alice = key.sign(&claims(ISS, "orders", "alice"));
    let reply = client
        .get(url("/profiles/alice"))
        .bearer_auth(&alice)
        .header(PRINCIPAL_HEADER, r#"User::"admin""#)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200, "{}", envoy.log());
    assert_eq!(reply.text().await.unwrap(), "upstream");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/profiles/alice");
    assert_eq!(seen[0].header(PRINCIPAL_HEADER), Some(r#"User::"alice""#));
    assert_eq!(
        seen[0].header("authorization"),
        None,
        "the token is not forwarded"
    );

    // No token: 401 with a Bearer challenge, and nothing reaches the upstream.
    let reply = client.get(url("/orders")).send().await.unwrap();
    assert_eq!(reply.status(), 401);
    let challenge = reply.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with(r#"Bearer realm="cedargate""#),
        "{challenge}"
    );

    // A bad token: 401 naming the error; the token is not echoed.
    let reply = client
        .get(url("/orders"))
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);
    assert!(
        reply.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );

    // Authenticated but not permitted: 403 with a JSON body.
    let reply = client
        .get(url("/profiles/bob"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 403);
    assert_eq!(reply.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "policy_denied");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(upstream.seen().len(), 1, "no deny reached the upstream");

    // Key rotation mid-run: the IdP publishes k2 beside k1, then drops k1. A k2 token works
    // at once (one early fetch on its unknown kid); the k1 token, cached until now, dies with
    // its key once a fetch (here asked for by another unknown kid) no longer serves it.
    let rotated = TestKey::generate(Algorithm::ES256, "k2");
    jwks.set_keys(&[&key, &rotated]);
    let bob = rotated.sign(&claims(ISS, "orders", "bob"));
    let reply = client
        .get(url("/profiles/bob"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    jwks.set_keys(&[&rotated]);
    let probe = TestKey::generate(Algorithm::ES256, "probe").sign(&claims(ISS, "orders", "x"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let probed = client
            .get(url("/profiles/alice"))
            .bearer_auth(&probe)
            .send()
            .await
            .unwrap();
        assert_eq!(probed.status(), 401);
        let reply = client
            .get(url("/profiles/alice"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        if reply.status() == 401 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "k1 stayed in force");
    }
    let seen = upstream.seen();
    assert_eq!(seen[1].header(PRINCIPAL_HEADER), Some(r#"User::"bob""#));
    // Only alice's token, while k1 was still published, may have reached it since.
    assert!(
        seen[2..]
            .iter()
            .all(|s| s.header(PRINCIPAL_HEADER) == Some(r#"User::"alice""#))
    );
    jwks.stop().await;
}

#[tokio::test]
async fn envoy_enforces_cedargate_decisions_over_the_http_service() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut config: Config = test_config(PolicySource::Embedded);
    config.issuers = vec![test_issuer(ISS, &jwks.uri())];
    config.auth.forward_token = false;
    config.listen.http = Some(([127, 0, 0, 1], 0).into());
    // What the shipped envoy-http.yaml puts before every path.
    config.http_service.path_prefix = "/authz".into();
    let server = TestServer::with_config(config).await;
    server.ready().await;
    let upstream = Upstream::start().await;
    let mut ports = ports(None, &upstream);
    ports.insert(CEDARGATE_HTTP, server.app.http_addr.unwrap().port());
    let envoy = Envoy::start(&render(HTTP, &ports, &HashMap::new())).await;
    let port = envoy.port();
    let client = http_client();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    // Allowed: the upstream sees cedargate's identity headers (a forged principal replaced, a
    // forged peer header removed), not the token, and the path without Envoy's prefix.
    let alice = key.sign(&claims(ISS, "orders", "alice"));
    let reply = client
        .get(url("/profiles/alice?tab=1"))
        .bearer_auth(&alice)
        .header(PRINCIPAL_HEADER, r#"User::"admin""#)
        .header(PEER_HEADER, CHECKOUT)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200, "{}", envoy.log());
    assert_eq!(reply.text().await.unwrap(), "upstream");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/profiles/alice?tab=1");
    assert_eq!(seen[0].header(PRINCIPAL_HEADER), Some(r#"User::"alice""#));
    assert_eq!(seen[0].header("x-cedargate-subject"), Some("alice"));
    assert_eq!(
        seen[0].header(PEER_HEADER),
        None,
        "a forged peer header is removed"
    );
    assert_eq!(
        seen[0].header("authorization"),
        None,
        "the token is not forwarded"
    );

    // No token: 401 with the Bearer challenge; a policy deny: 403 with the JSON body.
    let reply = client.get(url("/orders")).send().await.unwrap();
    assert_eq!(reply.status(), 401);
    assert!(
        reply.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with(r#"Bearer realm="cedargate""#)
    );
    let reply = client
        .get(url("/profiles/bob"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 403);
    let body: serde_json::Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "policy_denied");
    // A header sent twice arrives twice (encode_raw_headers) and is refused, not joined.
    let reply = client
        .get(url("/healthz"))
        .header("x-debug", "true")
        .header("x-debug", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);
    assert_eq!(upstream.seen().len(), 1, "no deny reached the upstream");
    jwks.stop().await;
}

#[tokio::test]
async fn mtls_workload_identity_decides() {
    let pki = Pki::new();
    let server = TestServer::with_config(test_config(PolicySource::Embedded)).await;
    let upstream = Upstream::start().await;
    let (envoy, port) = envoy_for(MTLS, server.grpc_addr().port(), &upstream, &pki.files()).await;
    let url = format!("https://envoy.test:{port}/orders");

    // The checkout workload may create orders (policy orders-checkout-workload-create).
    let checkout = pki.ca.issue(&[CHECKOUT], &[]);
    let reply = pki
        .client(Some(&checkout), port)
        .post(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200, "{}", envoy.log());
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header(PRINCIPAL_HEADER),
        Some(format!(r#"Workload::"{CHECKOUT}""#).as_str())
    );
    assert_eq!(seen[0].header(PEER_HEADER), Some(CHECKOUT));

    // Another workload of the same CA is refused by policy.
    let frontend = pki.ca.issue(&[FRONTEND], &[]);
    let reply = pki
        .client(Some(&frontend), port)
        .post(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 403);

    // No client certificate: the handshake is refused before any HTTP.
    let refused = pki.client(None, port).post(&url).send().await;
    assert!(refused.is_err(), "{refused:?}");
    // A certificate of another CA: refused too.
    let stranger = TestCa::new("other CA").issue(&[CHECKOUT], &[]);
    let refused = pki.client(Some(&stranger), port).post(&url).send().await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(upstream.seen().len(), 1);
}

/// The cedargate binary serving the embedded example set on a Unix socket. A socket path of
/// the test's own (not a TCP port) guarantees that what answers Envoy after a restart is this
/// cedargate: a freed TCP port could be taken by another test's server in the meantime.
struct Cedargate {
    child: Child,
}

impl Cedargate {
    fn start(socket: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cedargate"))
            .args(["serve", "--admin", "127.0.0.1:0", "--grpc"])
            .arg(format!("unix:{}", socket.display()))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        loop {
            let line = lines
                .next()
                .expect("cedargate logs before exiting")
                .unwrap();
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            if value["message"] == "cedargate serving" {
                break;
            }
        }
        // Keep draining its log so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child }
    }

    /// SIGKILL: no shutdown, the socket file stays behind (stale).
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Cedargate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const UP: u8 = 0;
const DOWN: u8 = 1;
const BACK: u8 = 2;

/// Waits (bounded) until `done` holds, polling while the drivers run.
async fn wait_for(what: &str, log: &dyn Fn() -> String, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_fails_closed_while_cedargate_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("run/check.sock");
    let cedargate = Cedargate::start(&socket);
    let upstream = Upstream::start().await;
    let files = HashMap::from([("/run/cedargate/check.sock", socket.clone())]);
    let envoy = Envoy::start(&render(UDS, &ports(None, &upstream), &files)).await;
    let port = envoy.port();
    let client = http_client();
    let url = format!("http://127.0.0.1:{port}/healthz");

    // Drive requests the whole time. Each carries a forged identity header: cedargate's allow
    // replaces it, so a request that got through without a decision would arrive forged.
    let phase = Arc::new(AtomicU8::new(UP));
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(std::sync::Mutex::new(Vec::<(u8, u8, u16)>::new()));
    let mut drivers = Vec::new();
    for _ in 0..4 {
        let (client, url, phase, stop, results) = (
            client.clone(),
            url.clone(),
            phase.clone(),
            stop.clone(),
            results.clone(),
        );
        drivers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let sent = phase.load(Ordering::Acquire);
                let status = match client
                    .get(&url)
                    .header(PRINCIPAL_HEADER, "forged")
                    .send()
                    .await
                {
                    Ok(reply) => reply.status().as_u16(),
                    Err(_) => 0,
                };
                let done = phase.load(Ordering::Acquire);
                results.lock().unwrap().push((sent, done, status));
            }
        }));
    }
    let count = |pred: &dyn Fn(&(u8, u8, u16)) -> bool| {
        results.lock().unwrap().iter().filter(|r| pred(r)).count()
    };
    let log = || envoy.log();

    wait_for("allowed requests", &log, || count(&|r| r.2 == 200) >= 20).await;
    tokio::task::block_in_place(|| cedargate.kill());
    phase.store(DOWN, Ordering::Release);
    wait_for("refused requests while down", &log, || {
        count(&|r| r.0 == DOWN && r.1 == DOWN) >= 50
    })
    .await;
    // BACK before the restart: the new process serves before `start` returns, so a request
    // that completes from here on may legitimately be allowed.
    phase.store(BACK, Ordering::Release);
    let cedargate = tokio::task::block_in_place(|| Cedargate::start(&socket));
    wait_for("recovery", &log, || {
        count(&|r| r.0 == BACK && r.2 == 200) >= 20
    })
    .await;
    stop.store(true, Ordering::Release);
    for driver in drivers {
        driver.await.unwrap();
    }
    drop(cedargate);

    let results = results.lock().unwrap().clone();
    let down: Vec<_> = results
        .iter()
        .filter(|r| r.0 == DOWN && r.1 == DOWN)
        .collect();
    let let_through: Vec<_> = down
        .iter()
        .filter(|r| r.2 == 0 || (200..300).contains(&r.2))
        .collect();
    assert!(
        let_through.is_empty(),
        "{} of {} requests while cedargate was down were not refused by Envoy, e.g. {:?}",
        let_through.len(),
        down.len(),
        let_through.iter().take(3).collect::<Vec<_>>()
    );
    // Envoy's own answer while down: status_on_error (503).
    assert!(down.iter().all(|r| r.2 == 503), "{down:?}");
    let seen = upstream.seen();
    let forged: Vec<_> = seen
        .iter()
        .filter(|s| s.header(PRINCIPAL_HEADER) != Some(r#"Anonymous::"anonymous""#))
        .collect();
    assert!(
        forged.is_empty(),
        "requests reached the upstream without an allow: {forged:?}"
    );
    let allowed = results.iter().filter(|r| r.2 == 200).count();
    assert_eq!(
        seen.len(),
        allowed,
        "every upstream request is an allowed answer"
    );
}

#[tokio::test]
async fn envoy_reaches_cedargate_over_a_unix_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("run/check.sock");
    let mut config = test_config(PolicySource::Embedded);
    config.listen.grpc = cedargate::config::GrpcListen::Unix(socket.clone());
    cedargate::app::install_crypto_provider();
    let server = cedargate::app::build(config).await.unwrap();
    let upstream = Upstream::start().await;
    let files = HashMap::from([("/run/cedargate/check.sock", socket.clone())]);
    let envoy = Envoy::start(&render(UDS, &ports(None, &upstream), &files)).await;
    let listen = envoy.port();
    let client = http_client();

    let reply = client
        .get(format!("http://127.0.0.1:{listen}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200, "{}", envoy.log());
    assert_eq!(
        upstream.seen()[0].header(PRINCIPAL_HEADER),
        Some(r#"Anonymous::"anonymous""#)
    );
    let reply = client
        .get(format!("http://127.0.0.1:{listen}/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 403);
    assert_eq!(upstream.seen().len(), 1);
    server.shutdown().await.unwrap();
    let reply = client
        .get(format!("http://127.0.0.1:{listen}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 503, "fails closed when the socket is gone");
}

/// The example policy set with one more policy file, `extra.cedar`.
fn policies_with(extra: &str) -> tempfile::TempDir {
    support::policies::example_with(&[("extra.cedar", extra)])
}

/// A cedargate on the policies in `dir`, an upstream, and the local Envoy configuration
/// rendered for them, as YAML to change before Envoy starts.
async fn local_setup(dir: &std::path::Path) -> (TestServer, Upstream, yaml_serde::Value) {
    let server = TestServer::with_config(test_config(PolicySource::Dir(dir.to_owned()))).await;
    let upstream = Upstream::start().await;
    let rendered = render(
        LOCAL,
        &ports(Some(server.grpc_addr().port()), &upstream),
        &HashMap::new(),
    );
    let config = yaml_serde::from_str(&rendered).unwrap();
    (server, upstream, config)
}

/// What `peer.xff_trusted_hops` counts, through the real Envoy of the shipped configurations
/// (`use_remote_address: true`): Envoy appends the address of its own downstream peer (here
/// the test client, playing a load balancer that appended the client's address first), so
/// with one proxy in front of Envoy the client's entry is 2 from the right, over gRPC and
/// over the HTTP service alike (Envoy 1.40's HTTP ext_authz client adds no entry of its own).
#[tokio::test]
async fn trusted_hops_count_the_addresses_envoy_appends() {
    let dir = policies_with(
        r#"@id("health-inside") forbid (principal, action, resource == Path::"/healthz")
           unless { context.peer has ip && context.peer.ip.isInRange(ip("10.0.0.0/8")) };"#,
    );
    let upstream = Upstream::start().await;
    let client = http_client();
    for (shipped, hops) in [(LOCAL, 2), (HTTP, 2)] {
        let mut config: Config = test_config(PolicySource::Dir(dir.path().to_owned()));
        config.peer.xff_trusted_hops = hops;
        config.listen.http = Some(([127, 0, 0, 1], 0).into());
        config.http_service.path_prefix = "/authz".into();
        let server = TestServer::with_config(config).await;
        let mut ports = ports(Some(server.grpc_addr().port()), &upstream);
        ports.insert(CEDARGATE_HTTP, server.app.http_addr.unwrap().port());
        let envoy = Envoy::start(&render(shipped, &ports, &HashMap::new())).await;
        let url = format!("http://127.0.0.1:{}/healthz", envoy.port());
        let ask = |client_address: &'static str| {
            client
                .get(&url)
                .header("x-forwarded-for", client_address)
                .send()
        };
        assert_eq!(
            ask("10.1.2.3").await.unwrap().status(),
            200,
            "{shipped}: {}",
            envoy.log()
        );
        assert_eq!(ask("192.168.0.9").await.unwrap().status(), 403, "{shipped}");
    }
}

/// The route's metadata reaches policies through the shipped gRPC configuration
/// (`route_metadata_context_namespaces: [cedargate]`): a route for `/orders` that says
/// `tier: gold` lets anonymous callers list orders, and the catch-all route, which says
/// nothing, does not even reach the public health page under a policy that requires a tier.
#[tokio::test]
async fn a_routes_metadata_reaches_the_policies_through_envoy() {
    let dir = policies_with(
        r#"@id("gold-lists") permit (principal, action == Action::"orders:list", resource)
           when { context.request.route_metadata.hasTag("tier") && context.request.route_metadata.getTag("tier") == "gold" };
           @id("tiered-only") forbid (principal, action, resource == Path::"/healthz")
           unless { context.request.route_metadata.hasTag("tier") };"#,
    );
    let (_server, _upstream, mut config) = local_setup(dir.path()).await;
    let gold: yaml_serde::Value = yaml_serde::from_str(
        "{ match: { prefix: /orders }, route: { cluster: upstream }, metadata: { filter_metadata: { cedargate: { tier: gold } } } }",
    )
    .unwrap();
    fn prepend_route(value: &mut yaml_serde::Value, route: &yaml_serde::Value) -> bool {
        match value {
            yaml_serde::Value::Mapping(map) => {
                if let Some(yaml_serde::Value::Sequence(routes)) = map.get_mut("routes") {
                    routes.insert(0, route.clone());
                    return true;
                }
                map.iter_mut().any(|(_, v)| prepend_route(v, route))
            }
            yaml_serde::Value::Sequence(items) => items.iter_mut().any(|v| prepend_route(v, route)),
            _ => false,
        }
    }
    assert!(prepend_route(&mut config, &gold));
    let envoy = Envoy::start(&yaml_serde::to_string(&config).unwrap()).await;
    let client = http_client();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", envoy.port());
    let orders = client.get(url("/orders")).send().await.unwrap();
    assert_eq!(orders.status(), 200, "{}", envoy.log());
    let health = client.get(url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 403);
}

/// Request bodies through Envoy: the local configuration with the ext_authz option the shipped
/// configurations document (`with_request_body`, partial bodies allowed so that cedargate,
/// not Envoy, answers for a body over the limit): a JSON body reaches the policies as typed
/// values, a body that is not JSON is a 400 and a body cut short is a 413, from cedargate.
#[tokio::test]
async fn a_json_body_reaches_the_policies_through_envoy() {
    let dir = policies_with(
        r#"@id("euros") permit (principal, action == Action::"orders:create", resource)
           when { context.request has body && context.request.body has currency && context.request.body.currency == "EUR" };"#,
    );
    let (_server, _upstream, mut config) = local_setup(dir.path()).await;
    fn ext_authz(value: &mut yaml_serde::Value) -> Option<&mut yaml_serde::Mapping> {
        match value {
            yaml_serde::Value::Mapping(map) => {
                let is_ext_authz = map
                    .get("@type")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.ends_with("ext_authz.v3.ExtAuthz"));
                if is_ext_authz {
                    return Some(map);
                }
                map.iter_mut().find_map(|(_, v)| ext_authz(v))
            }
            yaml_serde::Value::Sequence(items) => items.iter_mut().find_map(ext_authz),
            _ => None,
        }
    }
    let filter = ext_authz(&mut config).expect("the local configuration has ext_authz");
    filter.insert(
        "with_request_body".into(),
        yaml_serde::from_str("{ max_request_bytes: 256, allow_partial_message: true }").unwrap(),
    );
    let envoy = Envoy::start(&yaml_serde::to_string(&config).unwrap()).await;
    let client = http_client();
    let post = |body: String| {
        client
            .post(format!("http://127.0.0.1:{}/orders", envoy.port()))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let euros = post(r#"{"total": 2500, "currency": "EUR"}"#.into())
        .await
        .unwrap();
    assert_eq!(euros.status(), 200, "{}", envoy.log());
    let dollars = post(r#"{"total": 2500, "currency": "USD"}"#.into())
        .await
        .unwrap();
    assert_eq!(dollars.status(), 403);
    // The example set's forbid reads the total: a large order needs a role.
    let large = post(r#"{"total": 250000, "currency": "EUR"}"#.into())
        .await
        .unwrap();
    assert_eq!(large.status(), 403);
    let form = post("total=2500&currency=EUR".into()).await.unwrap();
    assert_eq!(form.status(), 400);
    assert!(form.text().await.unwrap().contains("bad_body"));
    let long = format!(r#"{{"currency": "EUR", "note": "{}"}}"#, "x".repeat(400));
    let cut = post(long).await.unwrap();
    assert_eq!(cut.status(), 413, "{}", envoy.log());
    assert!(cut.text().await.unwrap().contains("body_too_large"));
}

/// The example entity source (`examples/entity-source/entity_service.py`) behind a real
/// Envoy: `GET /orders/{id}` is allowed only for the order's owner, ownership fetched from the
/// service (orders 2001 and 2002 are not in `entities.json`), with the example's bearer token.
#[tokio::test]
async fn an_order_fetched_from_the_example_service_is_read_only_by_its_owner() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/entity-source");
    let mut service = Command::new("python3")
        .arg(example.join("entity_service.py"))
        .args(["--port", "0", "--token", "example-token"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the example entity service");
    let mut first = String::new();
    BufReader::new(service.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let address = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the service says where it listens: {first}"))
        .to_owned();
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    // The example's configuration, with the service's port and absolute paths.
    let text = std::fs::read_to_string(example.join("config.yaml")).unwrap();
    let edited = text
        .replace("127.0.0.1:8081", &address)
        .replace(
            "dir: ../../policies",
            &format!("dir: {}/../../policies", example.display()),
        )
        .replace(
            "bearer_token_file: source-token",
            &format!("bearer_token_file: {}/source-token", example.display()),
        );
    assert_eq!(
        edited.matches(&*example.display().to_string()).count(),
        2,
        "{edited}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), edited).unwrap();
    let mut config = Config::load(&dir.path().join("config.yaml")).unwrap();
    config.listen = test_config(PolicySource::Embedded).listen;
    config.issuers = vec![test_issuer(ISS, &jwks.uri())];
    let server = TestServer::with_config(config).await;
    server.ready().await;
    let upstream = Upstream::start().await;
    let (envoy, port) =
        envoy_for(LOCAL, server.grpc_addr().port(), &upstream, &HashMap::new()).await;
    let client = http_client();
    let read = |user: &str, order: &str| {
        client
            .get(format!("http://127.0.0.1:{port}/orders/{order}"))
            .bearer_auth(key.sign(&claims(ISS, "orders", user)))
            .send()
    };
    assert_eq!(
        read("alice", "2001").await.unwrap().status(),
        200,
        "{}",
        envoy.log()
    );
    assert_eq!(read("bob", "2001").await.unwrap().status(), 403);
    assert_eq!(read("bob", "2002").await.unwrap().status(), 200);
    assert_eq!(read("alice", "2002").await.unwrap().status(), 403);
    // An order the application does not have.
    assert_eq!(read("alice", "2999").await.unwrap().status(), 403);
    // The service gone: answers kept within max_stale still serve, a new order is a 503.
    service.kill().unwrap();
    service.wait().unwrap();
    assert_eq!(read("alice", "2001").await.unwrap().status(), 200);
    let gone = read("alice", "2003").await.unwrap();
    assert_eq!(gone.status(), 503);
    assert!(gone.text().await.unwrap().contains("entity_unavailable"));
}

/// Recorded real traffic replays exactly: the mTLS front proxy of the shipped configuration
/// (client certificates, bearer tokens, JSON bodies Envoy buffers) in front of a cedargate
/// writing decision records; `cedargate replay` against the same set reproduces every
/// answer Envoy returned, and against a set with one more forbid reports exactly the
/// requests that forbid would have refused.
#[tokio::test]
async fn recorded_envoy_traffic_replays_to_the_same_decisions() {
    let pki = Pki::new();
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let policies = support::policies::example_with(&[]);
    let records = tempfile::tempdir().unwrap();
    let mut config: Config = test_config(PolicySource::Dir(policies.path().to_owned()));
    config.issuers = vec![test_issuer(ISS, &jwks.uri())];
    config.records = Some(cedargate::config::RecordSettings {
        path: records.path().join("records.jsonl"),
        max_file_bytes: 1 << 20,
        max_files: 1,
        sample: 1.0,
    });
    let server = TestServer::with_config(config).await;
    server.ready().await;
    let upstream = Upstream::start().await;
    let (envoy, port) = envoy_for(MTLS, server.grpc_addr().port(), &upstream, &pki.files()).await;
    let url = |path: &str| format!("https://envoy.test:{port}{path}");
    let checkout = pki.client(Some(&pki.ca.issue(&[CHECKOUT], &[])), port);
    let frontend = pki.client(Some(&pki.ca.issue(&[FRONTEND], &[])), port);
    let alice = key.sign(&claims(ISS, "orders", "alice"));
    let json = |client: &reqwest::Client, body: &str| {
        client
            .post(url("/orders"))
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let requests = vec![
        checkout.post(url("/orders")),
        frontend.post(url("/orders")),
        json(&checkout, r#"{"total": 2500}"#),
        json(&checkout, r#"{"total": 250000}"#),
        json(&checkout, "{not json"),
        frontend.get(url("/profiles/alice")).bearer_auth(&alice),
        frontend.get(url("/profiles/bob")).bearer_auth(&alice),
        frontend.get(url("/orders/1001")).bearer_auth(&alice),
        frontend.get(url("/orders")).bearer_auth("not.a.jwt"),
        checkout.get(url("/healthz")),
    ];
    // One at a time, so records are in request order (the edge proxy makes its own
    // request ids: a client's x-request-id is not trusted at the edge).
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses[0], 200, "{}", envoy.log());
    assert_eq!(statuses, [200, 403, 200, 403, 400, 200, 403, 403, 401, 200]);
    server.app.shutdown().await.unwrap();

    let path = records.path().join("records.jsonl");
    let recorded: Vec<cedargate::record::Record> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| cedargate::record::Record::parse(l).unwrap())
        .collect();
    // One record per request Envoy asked about, each with the status Envoy returned.
    let answered: Vec<u16> = recorded
        .iter()
        .map(|r| r.outcome.status.unwrap_or(200))
        .collect();
    assert_eq!(answered, statuses);
    assert_eq!(
        recorded[0].peer.principal, CHECKOUT,
        "the peer as Envoy saw it"
    );
    assert!(recorded[0].peer.cert_sha256.is_some());

    let replay = |set: &std::path::Path| {
        cedargate::cli::replay::replay(&cedargate::cli::replay::ReplayArgs {
            records: vec![path.clone()],
            policies: set.to_owned(),
            baseline: None,
            public_key: None,
            format: "text".into(),
        })
        .unwrap()
    };
    let same = replay(policies.path());
    assert_eq!(same.records, 10);
    assert_eq!(same.unchanged, 10, "{same:?}");

    let closed = support::policies::example_with(&[(
        "extra.cedar",
        r#"@id("no-workload-orders") forbid (principal is Workload, action == Action::"orders:create", resource);"#,
    )]);
    let report = replay(closed.path());
    assert_eq!(report.changed.allow_to_deny, 2, "{report:?}");
    assert_eq!(
        report.changed.examples[&cedargate::record::replay::Change::AllowToDeny],
        [
            recorded[0].request_id.clone(),
            recorded[2].request_id.clone()
        ]
    );
    assert_eq!(report.by_policy["no-workload-orders"].allow_to_deny, 2);
    jwks.stop().await;
}

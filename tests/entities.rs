//! Entity data from the application, through the real gRPC server and a real entity source on
//! 127.0.0.1: orders are not in `entities.json` but fetched (`entity_source`, type `Order`),
//! so "users may read only the orders they own" is decided on the application's data. The
//! cache answers repeated checks, concurrent misses on one uid cost one fetch, a source that
//! fails (500, garbage, too large, hanging, entities that do not fit the schema) denies with
//! `entity_unavailable` (503) unless a copy within `max_stale` is kept, and an answer cannot
//! add entities it was not asked for.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use cedargate::config::{EntitySourceSettings, EntityTypeSettings, PolicySource};
use cedargate::testutil::jwt::{JwksServer, TestKey, claims};
use cedargate::testutil::{TestServer, check, metric_value, test_config, test_issuer};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tonic::Code;

const ISS: &str = "https://idp.test";

/// How the test entity source answers.
#[derive(Debug, Clone)]
enum Mode {
    Serve,
    Status(u16),
    Garbage,
    Huge,
}

#[derive(Clone)]
struct SourceState {
    entities: Arc<Mutex<HashMap<String, Value>>>,
    extra: Arc<Mutex<Vec<Value>>>,
    mode: Arc<Mutex<Mode>>,
    fetches: Arc<AtomicUsize>,
    asked: Arc<Mutex<Vec<Value>>>,
    bearer: Arc<Mutex<Vec<String>>>,
    /// Held by a test to keep every answer waiting (a slow or hanging source).
    gate: Arc<tokio::sync::RwLock<()>>,
}

/// An entity source on 127.0.0.1 answering `POST /entities` with the orders it was given.
struct EntitySource {
    addr: std::net::SocketAddr,
    state: SourceState,
}

async fn answer(
    State(state): State<SourceState>,
    headers: HeaderMap,
    body: String,
) -> (axum::http::StatusCode, String) {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let _open = state.gate.read().await;
    if let Some(auth) = headers.get("authorization") {
        state
            .bearer
            .lock()
            .unwrap()
            .push(auth.to_str().unwrap().to_owned());
    }
    let request: Value = serde_json::from_str(&body).unwrap();
    state.asked.lock().unwrap().push(request.clone());
    let mode = state.mode.lock().unwrap().clone();
    let ok = axum::http::StatusCode::OK;
    match mode {
        Mode::Status(code) => (axum::http::StatusCode::from_u16(code).unwrap(), "{}".into()),
        Mode::Garbage => (ok, "{not json".into()),
        Mode::Huge => (ok, format!("[{}]", "0,".repeat(600_000) + "0")),
        Mode::Serve => {
            let entities = state.entities.lock().unwrap();
            let mut found: Vec<Value> = request["uids"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|uid| entities.get(uid["id"].as_str().unwrap()).cloned())
                .collect();
            found.extend(state.extra.lock().unwrap().iter().cloned());
            (ok, Value::Array(found).to_string())
        }
    }
}

impl EntitySource {
    async fn start() -> Self {
        let state = SourceState {
            entities: Arc::new(Mutex::new(HashMap::new())),
            extra: Arc::new(Mutex::new(Vec::new())),
            mode: Arc::new(Mutex::new(Mode::Serve)),
            fetches: Arc::new(AtomicUsize::new(0)),
            asked: Arc::new(Mutex::new(Vec::new())),
            bearer: Arc::new(Mutex::new(Vec::new())),
            gate: Arc::new(tokio::sync::RwLock::new(())),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/entities", post(answer))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    fn order(&self, id: &str, owner: Value) {
        let entity = json!({ "uid": { "type": "Order", "id": id }, "attrs": { "owner": owner }, "parents": [] });
        self.state
            .entities
            .lock()
            .unwrap()
            .insert(id.to_owned(), entity);
    }

    fn mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

fn owned_by(user: &str) -> Value {
    json!({ "__entity": { "type": "User", "id": user } })
}

struct Fixture {
    server: TestServer,
    source: EntitySource,
    key: TestKey,
    _jwks: JwksServer,
    _dir: tempfile::TempDir,
}

/// The example set without its static orders, an issuer, and an entity source for `Order`.
async fn fixture(ttl: &str, max_stale: &str, timeout: Duration) -> Fixture {
    fixture_with(ttl, max_stale, timeout, &[], |_| {}).await
}

/// [`fixture`], with `edit` applied to the entity source's settings.
async fn fixture_with(
    ttl: &str,
    max_stale: &str,
    timeout: Duration,
    files: &[(&str, &str)],
    edit: impl FnOnce(&mut cedargate::config::Config),
) -> Fixture {
    let mut all = vec![(
        "entities.json",
        r#"[{ "uid": { "type": "Group", "id": "admins" }, "attrs": {}, "parents": [] }]"#,
    )];
    all.extend_from_slice(files);
    let dir = support::policies::example_with(&all);
    let token_file = dir.path().join("source-token");
    std::fs::write(&token_file, "s3cret-source-token\n").unwrap();
    let source = EntitySource::start().await;
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut config = test_config(PolicySource::Dir(dir.path().to_owned()));
    config.issuers = vec![test_issuer(ISS, &jwks.uri())];
    let parse = |text: &str| humantime::parse_duration(text).unwrap();
    config.entity_source = Some(EntitySourceSettings {
        url: format!("http://{}/entities", source.addr),
        ca_file: None,
        client_cert: None,
        client_key: None,
        bearer_token_file: Some(token_file),
        timeout,
        max_response_bytes: 64 * 1024,
        types: [(
            "Order".to_owned(),
            EntityTypeSettings {
                ttl: parse(ttl),
                negative_ttl: parse(ttl),
                max_entries: 100,
                max_stale: parse(max_stale),
            },
        )]
        .into(),
    });
    edit(&mut config);
    let server = TestServer::with_config(config).await;
    server.ready().await;
    Fixture {
        server,
        source,
        key,
        _jwks: jwks,
        _dir: dir,
    }
}

impl Fixture {
    async fn read(&mut self, user: &str, order: &str) -> cedargate::testutil::Reply {
        let token = self.key.sign(&claims(ISS, "orders", user));
        self.server
            .check(
                check("GET", &format!("/orders/{order}"))
                    .bearer(&token)
                    .build(),
            )
            .await
    }
}

#[tokio::test]
async fn an_owner_reads_an_order_fetched_from_the_application() {
    let mut f = fixture("1h", "1h", Duration::from_secs(2)).await;
    f.source.order("2001", owned_by("alice"));
    let alice = f.read("alice", "2001").await;
    assert_eq!(alice.code(), Code::Ok, "{}", alice.body_text());
    assert_eq!(f.source.fetches(), 1);
    // The source was asked for that uid, with the configured credentials.
    let asked = f.source.state.asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        [json!({ "uids": [{ "type": "Order", "id": "2001" }] })]
    );
    assert_eq!(
        f.source.state.bearer.lock().unwrap().clone(),
        ["Bearer s3cret-source-token"]
    );
    // Another user: denied on the same (cached) data, no second fetch.
    let bob = f.read("bob", "2001").await;
    assert_eq!(bob.code(), Code::PermissionDenied);
    assert_eq!(bob.body()["error"], "policy_denied");
    assert_eq!(f.source.fetches(), 1, "answered from the cache");
    // An order the application does not have: a policy deny (not 503), remembered.
    let missing = f.read("alice", "9999").await;
    assert_eq!(missing.code(), Code::PermissionDenied);
    assert_eq!(f.read("alice", "9999").await.code(), Code::PermissionDenied);
    assert_eq!(f.source.fetches(), 2, "a missing entity is cached too");
    let metrics = f.server.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "cedargate_entity_cache_total",
            &[("type", "Order"), ("result", "hit")]
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "cedargate_entity_cache_total",
            &[("type", "Order"), ("result", "negative_hit")]
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn concurrent_misses_on_one_uid_cost_one_fetch() {
    let f = fixture("1h", "1h", Duration::from_secs(5)).await;
    f.source.order("3001", owned_by("alice"));
    // Every answer waits until the checks are all in.
    let gate = f.source.state.gate.clone().write_owned().await;
    let token = f.key.sign(&claims(ISS, "orders", "alice"));
    let channel = f.server.channel().await;
    let mut checks = Vec::new();
    for _ in 0..16 {
        let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel.clone());
        let request = check("GET", "/orders/3001").bearer(&token).build();
        checks.push(tokio::spawn(async move {
            cedargate::testutil::Reply(client.check(request).await.unwrap().into_inner())
        }));
    }
    // The first check's fetch reaches the source and waits at the gate; the others join it.
    tokio::time::timeout(Duration::from_secs(5), async {
        while f.source.fetches() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    drop(gate);
    for check in checks {
        assert_eq!(check.await.unwrap().code(), Code::Ok);
    }
    assert_eq!(
        f.source.fetches(),
        1,
        "one fetch for sixteen concurrent misses"
    );
}

#[tokio::test]
async fn a_source_that_cannot_answer_denies_with_entity_unavailable() {
    let mut f = fixture("1h", "1h", Duration::from_millis(300)).await;
    f.source.order("4001", owned_by("alice"));
    for (mode, reason) in [
        (Mode::Status(500), "status"),
        (Mode::Garbage, "invalid"),
        (Mode::Huge, "too_large"),
    ] {
        f.source.mode(mode.clone());
        let id = format!("40{}", f.source.fetches() + 10);
        f.source.order(&id, owned_by("alice"));
        let reply = f.read("alice", &id).await;
        assert_eq!(reply.code(), Code::Unavailable, "{mode:?}");
        assert_eq!(reply.http_status(), Some(503), "{mode:?}");
        assert_eq!(reply.body()["error"], "entity_unavailable", "{mode:?}");
        let metrics = f.server.metrics().await;
        assert!(
            metric_value(
                &metrics,
                "cedargate_entity_fetch_failures_total",
                &[("reason", reason)]
            ) >= 1.0,
            "{mode:?}: {metrics}"
        );
    }
    // A source that hangs: the fetch's timeout, inside the check's deadline.
    f.source.mode(Mode::Serve);
    let gate = f.source.state.gate.clone().write_owned().await;
    let reply = f.read("alice", "4999").await;
    assert_eq!(reply.body()["error"], "entity_unavailable");
    drop(gate);
    // An entity that does not fit the schema (owner is not a User) is not used.
    f.source.order("4500", json!("alice"));
    let reply = f.read("alice", "4500").await;
    assert_eq!(reply.body()["error"], "entity_unavailable");
}

#[tokio::test]
async fn a_kept_answer_serves_while_the_source_is_down_within_max_stale() {
    // A TTL of 1 ns: every kept answer is past it by the next check, without waiting.
    let mut f = fixture("1ns", "1h", Duration::from_millis(300)).await;
    f.source.order("5001", owned_by("alice"));
    assert_eq!(f.read("alice", "5001").await.code(), Code::Ok);
    f.source.mode(Mode::Status(503));
    let stale = f.read("alice", "5001").await;
    assert_eq!(stale.code(), Code::Ok, "{}", stale.body_text());
    assert_eq!(
        f.source.fetches(),
        2,
        "asked again, failed, served the kept copy"
    );
    let metrics = f.server.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "cedargate_entity_cache_total",
            &[("type", "Order"), ("result", "stale")]
        ) >= 1.0,
        "{metrics}"
    );

    let mut f = fixture("1ns", "1ns", Duration::from_millis(300)).await;
    f.source.order("5002", owned_by("alice"));
    assert_eq!(f.read("alice", "5002").await.code(), Code::Ok);
    f.source.mode(Mode::Status(503));
    let expired = f.read("alice", "5002").await;
    assert_eq!(expired.body()["error"], "entity_unavailable");
}

#[tokio::test]
async fn an_answer_cannot_add_entities_it_was_not_asked_for() {
    let mut f = fixture("1h", "1h", Duration::from_secs(2)).await;
    // The source also returns bob as a member of the admins, and an order nobody asked for.
    f.source.state.extra.lock().unwrap().extend([
        json!({ "uid": { "type": "User", "id": "bob" }, "attrs": {}, "parents": [{ "type": "Group", "id": "admins" }] }),
        json!({ "uid": { "type": "Order", "id": "6002" }, "attrs": { "owner": owned_by("bob") }, "parents": [] }),
    ]);
    f.source.order("6001", owned_by("alice"));
    let bob = f.read("bob", "6001").await;
    assert_eq!(
        bob.code(),
        Code::PermissionDenied,
        "bob did not become an admin"
    );
}

/// An entity source that requires a client certificate from `ca` (mTLS), serving `answer` to
/// every POST over HTTPS on 127.0.0.1 with `cert`; returns the port.
async fn mtls_source(
    ca: &cedargate::testutil::pki::TestCa,
    cert: &cedargate::testutil::pki::TestCert,
    answer: String,
) -> u16 {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert.pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca_cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
        roots.add(ca_cert.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_request| {
                    let body = hyper::body::Bytes::from(answer.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(body),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn the_source_is_reached_over_mtls_with_the_configured_client_certificate() {
    cedargate::app::install_crypto_provider();
    let ca = cedargate::testutil::pki::TestCa::new("source ca");
    let server_cert = ca.issue(&[], &["localhost"]);
    let client_cert = ca.issue(&["spiffe://shop.example/ns/shop/sa/cedargate"], &[]);
    let answer = json!([{ "uid": { "type": "Order", "id": "7001" }, "attrs": { "owner": owned_by("alice") }, "parents": [] }]);
    let port = mtls_source(&ca, &server_cert, answer.to_string()).await;
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_file = write("ca.pem", &ca.pem());
    let cert_file = write("client.pem", &client_cert.pem);
    let key_file = write("client-key.pem", &client_cert.key_pem);
    for with_certificate in [true, false] {
        let mut f = fixture_with("1h", "1h", Duration::from_secs(2), &[], |config| {
            let source = config.entity_source.as_mut().unwrap();
            source.url = format!("https://localhost:{port}/entities");
            source.ca_file = Some(ca_file.clone());
            if with_certificate {
                source.client_cert = Some(cert_file.clone());
                source.client_key = Some(key_file.clone());
            }
        })
        .await;
        let reply = f.read("alice", "7001").await;
        if with_certificate {
            assert_eq!(reply.code(), Code::Ok, "{}", reply.body_text());
        } else {
            // The source refuses the handshake: no data, a 503.
            assert_eq!(reply.body()["error"], "entity_unavailable");
        }
    }
}

/// An order names its shop, of a fetched type too: the shop is fetched in the next round, and
/// a policy reads its attributes (without it in the store, the `forbid` would be an
/// evaluation error).
#[tokio::test]
async fn the_entities_a_fetched_entity_names_are_fetched_too() {
    let schema = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schema.cedarschema"),
    )
    .unwrap();
    let with_shops = schema.replacen(
        "entity Order {\n  owner?: User,\n};",
        "entity Shop { open: Bool };\nentity Order {\n  owner?: User,\n  shop?: Shop,\n};",
        1,
    );
    assert_ne!(
        with_shops, schema,
        "the example schema declares Order as expected"
    );
    let closed = r#"@id("closed-shops") forbid (principal, action == Action::"orders:read", resource is Order)
                    when { resource has shop && !resource.shop.open };"#;
    let mut f = fixture_with(
        "1h",
        "1h",
        Duration::from_secs(2),
        &[("schema.cedarschema", &with_shops), ("shops.cedar", closed)],
        |config| {
            let source = config.entity_source.as_mut().unwrap();
            let order = source.types["Order"];
            source.types.insert("Shop".into(), order);
        },
    )
    .await;
    let order = |id: &str, shop: &str| {
        json!({ "uid": { "type": "Order", "id": id },
                "attrs": { "owner": owned_by("alice"), "shop": { "__entity": { "type": "Shop", "id": shop } } },
                "parents": [] })
    };
    let shop = |id: &str, open: bool| json!({ "uid": { "type": "Shop", "id": id }, "attrs": { "open": open }, "parents": [] });
    {
        let mut entities = f.source.state.entities.lock().unwrap();
        entities.insert("8001".into(), order("8001", "s-open"));
        entities.insert("8002".into(), order("8002", "s-closed"));
        entities.insert("s-open".into(), shop("s-open", true));
        entities.insert("s-closed".into(), shop("s-closed", false));
    }
    let open = f.read("alice", "8001").await;
    assert_eq!(open.code(), Code::Ok, "{}", open.body_text());
    let closed = f.read("alice", "8002").await;
    assert_eq!(closed.code(), Code::PermissionDenied);
    assert_eq!(
        closed.body()["error"],
        "policy_denied",
        "decided on the shop, not an error"
    );
    // Each check asked for the order, then for its shop.
    assert_eq!(f.source.fetches(), 4);
    let asked = f.source.state.asked.lock().unwrap().clone();
    assert_eq!(
        asked[1],
        json!({ "uids": [{ "type": "Shop", "id": "s-open" }] })
    );
}

/// The principal is fetched too when its type is: its attributes and parents come from the
/// application (asked in the same batch as the resource), the token's groups stay, and a
/// principal the application does not know gets no attribute from it.
#[tokio::test]
async fn a_principal_of_a_fetched_type_is_fetched_with_the_resource() {
    let schema = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schema.cedarschema"),
    )
    .unwrap();
    let with_departments = schema.replacen(
        "entity User in [Group];",
        "entity User in [Group] { department?: String };",
        1,
    );
    assert_ne!(
        with_departments, schema,
        "the example schema declares User as expected"
    );
    let support = r#"@id("support-reads") permit (principal is User, action == Action::"orders:read", resource is Order)
                     when { principal has department && principal.department == "support" };"#;
    let mut f = fixture_with(
        "1h",
        "1h",
        Duration::from_secs(2),
        &[
            ("schema.cedarschema", &with_departments),
            ("support.cedar", support),
        ],
        |config| {
            let source = config.entity_source.as_mut().unwrap();
            let order = source.types["Order"];
            source.types.insert("User".into(), order);
        },
    )
    .await;
    f.source.order("2001", owned_by("alice"));
    f.source.state.entities.lock().unwrap().insert(
        "bob".into(),
        json!({ "uid": { "type": "User", "id": "bob" }, "attrs": { "department": "support" }, "parents": [] }),
    );
    let bob = f.read("bob", "2001").await;
    assert_eq!(bob.code(), Code::Ok, "{}", bob.body_text());
    let asked = f.source.state.asked.lock().unwrap().clone();
    let mut uids = asked[0]["uids"].as_array().unwrap().clone();
    uids.sort_by_key(ToString::to_string);
    assert_eq!(
        uids,
        [
            json!({ "type": "Order", "id": "2001" }),
            json!({ "type": "User", "id": "bob" })
        ],
        "the order and the principal, in one request"
    );
    // Alice owns the order (the example's owner policy); carol is unknown to the application.
    assert_eq!(f.read("alice", "2001").await.code(), Code::Ok);
    let carol = f.read("carol", "2001").await;
    assert_eq!(carol.code(), Code::PermissionDenied);
    assert_eq!(carol.body()["error"], "policy_denied");
}

/// Findings of an attack review: a static entity is never asked of the source (it wins, also
/// while the source fails); an answer with one uid twice is refused, not resolved; a caller
/// whose deadline ends before a healthy source answers gets a 503, not the kept copy past its
/// TTL.
#[tokio::test]
async fn static_entities_ambiguous_answers_and_short_deadlines() {
    let statics = r#"[{ "uid": { "type": "Group", "id": "admins" }, "attrs": {}, "parents": [] },
        { "uid": { "type": "Order", "id": "1002" }, "attrs": { "owner": { "__entity": { "type": "User", "id": "alice" } } }, "parents": [] }]"#;
    let mut f = fixture_with(
        "1ns",
        "1h",
        Duration::from_secs(2),
        &[("entities.json", statics)],
        |config| {
            config.limits.check_timeout = Duration::from_millis(300);
        },
    )
    .await;
    f.source.mode(Mode::Status(500));
    assert_eq!(
        f.read("alice", "1002").await.code(),
        Code::Ok,
        "the static order decides"
    );
    assert_eq!(f.source.fetches(), 0, "a static uid is never asked");

    f.source.mode(Mode::Serve);
    f.source.order("9101", owned_by("bob"));
    f.source.state.extra.lock().unwrap().push(json!({
        "uid": { "type": "Order", "id": "9101" }, "attrs": { "owner": owned_by("alice") }, "parents": []
    }));
    let twice = f.read("alice", "9101").await;
    assert_eq!(
        twice.body()["error"],
        "entity_unavailable",
        "one uid answered twice"
    );
    f.source.state.extra.lock().unwrap().clear();

    // Kept, then past its 1 ns TTL; the source is healthy but slower than the check's 300 ms.
    f.source.order("9102", owned_by("bob"));
    assert_eq!(f.read("bob", "9102").await.code(), Code::Ok);
    f.source.order("9102", owned_by("alice"));
    let gate = f.source.state.gate.clone().write_owned().await;
    let late = f.read("bob", "9102").await;
    assert_eq!(
        late.body()["error"],
        "entity_unavailable",
        "not bob's stale copy"
    );
    drop(gate);
}

//! End-to-end benchmark through a real Envoy 1.40: what authorization costs a request at the
//! gateway, measured with wrk against the same Envoy set-up with different filter chains, in
//! one interleaved run on the same machine.
//!
//! Variants (every route answers Envoy's own `direct_response: 200`, so no upstream adds
//! noise and the authorization cost is compared against Envoy alone):
//! - `none`: no authorization (the ceiling);
//! - `jwt_authn+rbac`: Envoy's native filters doing the equivalent check (ES256 token of the
//!   issuer, audience, `sub == u0`, `GET /svc0/items/*`), without the JWT cache;
//! - `jwt_authn+rbac (cache)`: the same with `jwt_cache_config`;
//! - `ext_authz noop`: ext_authz to a no-op gRPC Check server (the baseline for an external
//!   authorizer: Envoy's ext_authz client, gRPC, loopback);
//! - `ext_authz cedargate`: ext_authz to `cedargate serve` over TCP (100-policy set, cached
//!   token after the first request, default configuration with the decision log on);
//! - `ext_authz cedargate (uds)`: the same over a Unix socket (Envoy `pipe` address).
//!
//! Before measuring, each variant is checked: the benchmark request gets 200, and (for the
//! authorizing variants) a request without a token is refused. wrk must report no non-2xx
//! answer. Rounds rotate the order of the variants; reported are medians over rounds.
//!
//! Needs wrk (`apt-get install wrk`) and Envoy 1.40 (found or installed like the tests do).
//! Run: `cargo bench --bench envoy`
//! (`CEDARGATE_ENVOY_SECONDS`, default 5; `CEDARGATE_ENVOY_ROUNDS`, default 3;
//! `CEDARGATE_ENVOY_CONNECTIONS`, default 32.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[allow(dead_code)]
#[path = "../tests/support/envoy.rs"]
mod envoy;
mod support;

use std::io::Write;
use std::process::Command;

use support::{Fixture, ISSUER, Server, Target};

fn main() {
    if support::run_role() {
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds: u32 = support::setting("CEDARGATE_ENVOY_SECONDS", "5");
    let rounds: usize = support::setting("CEDARGATE_ENVOY_ROUNDS", "3");
    let connections: u32 = support::setting("CEDARGATE_ENVOY_CONNECTIONS", "32");
    wrk_version();

    let runtime = support::runtime();
    let work = tempfile::tempdir().unwrap();
    let fixture = Fixture::write(work.path());
    let noop = Server::noop(work.path(), "tcp");
    let cedargate_tcp = Server::cedargate(work.path(), "tcp");
    let cedargate_uds = Server::cedargate(work.path(), "unix");

    let variants = [
        ("none", String::new(), String::new()),
        ("jwt_authn+rbac", jwt_rbac(&fixture, false), String::new()),
        (
            "jwt_authn+rbac (cache)",
            jwt_rbac(&fixture, true),
            String::new(),
        ),
        (
            "ext_authz noop",
            EXT_AUTHZ.into(),
            authz_cluster(&noop.target),
        ),
        (
            "ext_authz cedargate",
            EXT_AUTHZ.into(),
            authz_cluster(&cedargate_tcp.target),
        ),
        (
            "ext_authz cedargate (uds)",
            EXT_AUTHZ.into(),
            authz_cluster(&cedargate_uds.target),
        ),
    ];
    let envoys: Vec<(&str, envoy::Envoy)> = variants
        .iter()
        .map(|(name, filters, clusters)| {
            let config = envoy_config(filters, clusters);
            let envoy = runtime.block_on(envoy::Envoy::start(&config));
            runtime.block_on(sanity(name, envoy.port(), &fixture.token));
            (*name, envoy)
        })
        .collect();

    let mut rows: Vec<(usize, &str, Wrk)> = Vec::new();
    for round in 0..rounds {
        for i in 0..envoys.len() {
            let (name, envoy) = &envoys[(i + round) % envoys.len()];
            wrk(envoy.port(), &fixture.token, connections, 1);
            let result = wrk(envoy.port(), &fixture.token, connections, seconds);
            eprintln!(
                "round {round} {name:<26} {:>8.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs",
                result.rps, result.p50, result.p99
            );
            rows.push((round, name, result));
        }
    }
    report(&envoys, &rows, seconds, rounds, connections);
    write_csv(&rows);
    drop((noop, cedargate_tcp, cedargate_uds));
}

const EXT_AUTHZ: &str = r#"
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      grpc_service: { envoy_grpc: { cluster_name: authz }, timeout: 0.5s }
                      failure_mode_allow: false
                      status_on_error: { code: 503 }
                      include_peer_certificate: true
                      encode_raw_headers: true"#;

fn jwt_rbac(fixture: &Fixture, cache: bool) -> String {
    let jwks = serde_json::to_string(&fixture.jwks).unwrap();
    let cache = if cache {
        "\n                          jwt_cache_config: { jwt_cache_size: 100 }"
    } else {
        ""
    };
    format!(
        r#"
                  - name: envoy.filters.http.jwt_authn
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                      providers:
                        bench:
                          issuer: {ISSUER}
                          audiences: [orders]
                          local_jwks: {{ inline_string: {jwks} }}
                          payload_in_metadata: jwt_payload{cache}
                      rules:
                        - match: {{ prefix: "/" }}
                          requires: {{ provider_name: bench }}
                  - name: envoy.filters.http.rbac
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
                      rules:
                        action: ALLOW
                        policies:
                          u0-reads-svc0:
                            permissions:
                              - and_rules:
                                  rules:
                                    - header: {{ name: ":method", string_match: {{ exact: GET }} }}
                                    - url_path: {{ path: {{ safe_regex: {{ regex: "^/svc0/items/[^/]+$" }} }} }}
                            principals:
                              - metadata:
                                  filter: envoy.filters.http.jwt_authn
                                  path: [ {{ key: jwt_payload }}, {{ key: sub }} ]
                                  value: {{ string_match: {{ exact: u0 }} }}"#
    )
}

fn authz_cluster(target: &Target) -> String {
    let address = match target {
        Target::Tcp(uri) => {
            let port = uri.rsplit(':').next().unwrap();
            format!("{{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}")
        }
        Target::Unix(path) => format!("{{ pipe: {{ path: \"{}\" }} }}", path.display()),
    };
    format!(
        r#"
    - name: authz
      type: STATIC
      connect_timeout: 0.25s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      load_assignment:
        cluster_name: authz
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {address} }}"#
    )
}

/// The listener settings of `deploy/envoy/envoy-local.yaml` (path normalisation, header
/// rules) with a direct 200 answer instead of an upstream, and `filters` before the router.
fn envoy_config(filters: &str, clusters: &str) -> String {
    let clusters = if clusters.is_empty() { " []" } else { clusters };
    format!(
        r#"static_resources:
  listeners:
    - name: ingress
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                normalize_path: true
                merge_slashes: true
                path_with_escaped_slashes_action: REJECT_REQUEST
                common_http_protocol_options:
                  headers_with_underscores_action: REJECT_REQUEST
                route_config:
                  virtual_hosts:
                    - name: shop
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}
                http_filters:{filters}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:{clusters}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
"#
    )
}

/// The benchmark request is allowed; an authorizing variant refuses a request without a
/// token, and one with the token on a path its policy does not allow (so the policy layer,
/// not only token verification, is shown to run).
async fn sanity(name: &str, port: u16, token: &str) {
    let client = reqwest::Client::new();
    let status = |path: &str, bearer: Option<&str>| {
        let mut request = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .header("x-tenant", "t0");
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status() }
    };
    let with = status("/svc0/items/item0", Some(token)).await;
    assert_eq!(with, 200, "{name}: the benchmark request must pass");
    let refuses = !matches!(name, "none" | "ext_authz noop");
    let without = status("/svc0/items/item0", None).await;
    assert_eq!(
        without != 200,
        refuses,
        "{name}: a request without a token got {without}"
    );
    let elsewhere = status("/svc0/items/item0/versions", Some(token)).await;
    assert_eq!(
        elsewhere == 403 || elsewhere == 404,
        refuses,
        "{name}: a valid token on a path no policy allows got {elsewhere}"
    );
}

fn wrk_version() {
    let found = Command::new("wrk").arg("--version").output();
    assert!(
        found.is_ok(),
        "this benchmark needs wrk: `apt-get install wrk` (Debian) and run again"
    );
}

struct Wrk {
    rps: f64,
    p50: f64,
    p99: f64,
}

fn wrk(port: u16, token: &str, connections: u32, seconds: u32) -> Wrk {
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(["--latency", "--timeout", "2s"])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .args(["-H", "x-tenant: t0", "-H", "accept: */*"])
        .arg(format!("http://127.0.0.1:{port}/svc0/items/item0"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "wrk saw failed requests: {text}"
    );
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk output: {text}"))
            .trim()
            .to_owned()
    };
    Wrk {
        rps: field("Requests/sec:").parse().unwrap(),
        p50: micros(&field("50%")),
        p99: micros(&field("99%")),
    }
}

/// wrk's `123.45us`, `1.23ms`, `1.02s` in microseconds.
fn micros(text: &str) -> f64 {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        panic!("wrk latency {text:?}")
    };
    number.parse::<f64>().unwrap() * scale
}

fn report(
    envoys: &[(&str, envoy::Envoy)],
    rows: &[(usize, &str, Wrk)],
    seconds: u32,
    rounds: usize,
    connections: u32,
) {
    let med = |name: &str, f: fn(&Wrk) -> f64| {
        support::median(
            rows.iter()
                .filter(|(_, n, _)| *n == name)
                .map(|(_, _, w)| f(w))
                .collect(),
        )
    };
    println!(
        "\nenvoy: wrk -t2 -c{connections} -d{seconds}s, {rounds} rounds, medians; Envoy --concurrency 1"
    );
    println!("| variant | req/s | p50 µs | p99 µs | req/s vs none |");
    println!("|---|---|---|---|---|");
    let none = med("none", |w| w.rps);
    for (name, _) in envoys {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.2}× |",
            med(name, |w| w.rps),
            med(name, |w| w.p50),
            med(name, |w| w.p99),
            med(name, |w| w.rps) / none
        );
    }
    let ours = med("ext_authz cedargate", |w| w.rps);
    println!(
        "\nreq/s ratios: cedargate / ext_authz noop {:.2}×; cedargate / jwt_authn+rbac {:.2}× \
         (without its JWT cache; {:.2}× against it with the cache, like-for-like with cedargate's \
         token cache); cedargate over UDS / over TCP {:.2}×",
        ours / med("ext_authz noop", |w| w.rps),
        ours / med("jwt_authn+rbac", |w| w.rps),
        ours / med("jwt_authn+rbac (cache)", |w| w.rps),
        med("ext_authz cedargate (uds)", |w| w.rps) / ours
    );
    println!(
        "(closed loop at saturation: p50 is about connections / req/s; the servers' allow log: {})",
        support::allow_log()
    );
}

fn write_csv(rows: &[(usize, &str, Wrk)]) {
    let path = support::results_dir().join("envoy.csv");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "round,variant,rps,p50_us,p99_us").unwrap();
    for (round, name, w) in rows {
        writeln!(
            file,
            "{round},{name},{:.1},{:.1},{:.1}",
            w.rps, w.p50, w.p99
        )
        .unwrap();
    }
    eprintln!("rounds written to {}", path.display());
}

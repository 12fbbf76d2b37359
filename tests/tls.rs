//! TLS and mTLS on cedargate's own gRPC listener: real certificates (rcgen), a real tonic
//! client over rustls; trusted, untrusted and missing client certificates; certificates
//! replaced on disk are served to the next connection without a restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use cedargate::config::{PolicySource, TlsSettings};
use cedargate::testutil::pki::{TestCa, TestCert};
use cedargate::testutil::{TestServer, check, test_config};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    server_ca: TestCa,
    client_ca: TestCa,
    dir: tempfile::TempDir,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    // A new modification time even on file systems with coarse timestamps.
    let file = std::fs::File::options().write(true).open(path).unwrap();
    static WRITES: AtomicU64 = AtomicU64::new(1);
    let bump = SystemTime::now() + Duration::from_secs(WRITES.fetch_add(1, Ordering::SeqCst));
    file.set_modified(bump).unwrap();
}

impl Pki {
    fn new() -> Self {
        let pki = Self {
            server_ca: TestCa::new("cedargate server CA"),
            client_ca: TestCa::new("envoy client CA"),
            dir: tempfile::tempdir().unwrap(),
        };
        pki.install_server_cert(&pki.server_ca.issue(&[], &["localhost"]));
        write(&pki.dir.path().join("client-ca.pem"), &pki.client_ca.pem());
        pki
    }

    fn install_server_cert(&self, cert: &TestCert) {
        write(&self.dir.path().join("server.key"), &cert.key_pem);
        write(&self.dir.path().join("server.pem"), &cert.pem);
    }

    fn settings(&self, require_client_cert: bool) -> TlsSettings {
        TlsSettings {
            cert: self.dir.path().join("server.pem"),
            key: self.dir.path().join("server.key"),
            client_ca: Some(self.dir.path().join("client-ca.pem")),
            require_client_cert,
        }
    }
}

/// Connects over TLS trusting `server_ca`, optionally with a client certificate, and runs one
/// Check; the error text when anything along the way is refused.
async fn check_over_tls(
    server: &TestServer,
    server_ca: &str,
    client: Option<&TestCert>,
) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca))
        .domain_name("localhost");
    if let Some(cert) = client {
        tls = tls.identity(Identity::from_pem(&cert.pem, &cert.key_pem));
    }
    let channel = Endpoint::from_shared(format!("https://{}", server.grpc_addr()))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let reply = AuthorizationClient::new(channel)
        .check(check("GET", "/healthz").build())
        .await
        .map_err(|e| format!("check: {e:?}"))?;
    assert!(reply.into_inner().status.is_some());
    Ok(())
}

/// Failed handshakes with reason `error` (a refused or missing client certificate).
fn handshake_failures(metrics: &str) -> f64 {
    cedargate::testutil::metric_value(
        metrics,
        "cedargate_tls_handshake_failures_total",
        &[("reason", "error")],
    )
}

#[tokio::test]
async fn mtls_trusted_untrusted_and_missing_client_certificates() {
    cedargate::app::install_crypto_provider();
    let pki = Pki::new();
    let mut config = test_config(PolicySource::Embedded);
    config.tls = Some(pki.settings(true));
    let server = TestServer::with_config_no_client(config).await;
    let server_ca = pki.server_ca.pem();
    let before = handshake_failures(&server.metrics().await);

    let envoy = pki
        .client_ca
        .issue(&["spiffe://shop.example/ns/mesh/sa/envoy"], &[]);
    check_over_tls(&server, &server_ca, Some(&envoy))
        .await
        .expect("a trusted client cert works");

    let rogue = TestCa::new("rogue CA").issue(&["spiffe://shop.example/ns/mesh/sa/envoy"], &[]);
    let refused = check_over_tls(&server, &server_ca, Some(&rogue)).await;
    assert!(refused.is_err(), "an untrusted client cert must be refused");

    let refused = check_over_tls(&server, &server_ca, None).await;
    assert!(
        refused.is_err(),
        "no client cert must be refused when one is required"
    );

    let after = handshake_failures(&server.metrics().await);
    assert!(after >= before + 2.0, "{before} -> {after}");
}

#[tokio::test]
async fn optional_client_certificates() {
    cedargate::app::install_crypto_provider();
    let pki = Pki::new();
    let mut config = test_config(PolicySource::Embedded);
    config.tls = Some(pki.settings(false));
    let server = TestServer::with_config_no_client(config).await;
    check_over_tls(&server, &pki.server_ca.pem(), None)
        .await
        .expect("TLS without a client cert");
}

#[tokio::test]
async fn a_replaced_server_certificate_serves_the_next_connection() {
    cedargate::app::install_crypto_provider();
    let pki = Pki::new();
    let mut config = test_config(PolicySource::Embedded);
    config.tls = Some(pki.settings(true));
    let server = TestServer::with_config_no_client(config).await;
    let envoy = pki.client_ca.issue(&[], &[]);
    let old_ca = pki.server_ca.pem();
    check_over_tls(&server, &old_ca, Some(&envoy))
        .await
        .unwrap();

    let new_ca = TestCa::new("renewed server CA");
    pki.install_server_cert(&new_ca.issue(&[], &["localhost"]));
    check_over_tls(&server, &new_ca.pem(), Some(&envoy))
        .await
        .expect("the new certificate is served without a restart");
    assert!(
        check_over_tls(&server, &old_ca, Some(&envoy))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn unreadable_certificates_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(PolicySource::Embedded);
    config.tls = Some(TlsSettings {
        cert: dir.path().join("missing.pem"),
        key: dir.path().join("missing.key"),
        client_ca: None,
        require_client_cert: true,
    });
    let err = cedargate::app::build(config).await.unwrap_err().to_string();
    assert!(err.contains("missing.pem"), "{err}");
}

#[tokio::test]
async fn required_client_certificates_need_a_client_ca() {
    // Review round 2, finding 7: TLS without `client_ca` accepted any client although
    // client certificates are required by default.
    cedargate::app::install_crypto_provider();
    let pki = Pki::new();
    let mut config = test_config(PolicySource::Embedded);
    let mut settings = pki.settings(true);
    settings.client_ca = None;
    config.tls = Some(settings.clone());
    let err = cedargate::app::build(config).await.unwrap_err().to_string();
    assert!(err.contains("tls.client_ca"), "{err}");

    // The configuration file says so with the field and the fix.
    let text = "tls:\n  cert: server.pem\n  key: server.key\n";
    let err = cedargate::config::Config::from_yaml(std::path::Path::new("cedargate.yaml"), text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`tls.client_ca`"), "{err}");
    assert!(err.contains("require_client_cert: false"), "{err}");

    // Saying so explicitly accepts any TLS client.
    let text = "tls:\n  cert: server.pem\n  key: server.key\n  require_client_cert: false\n";
    assert!(
        cedargate::config::Config::from_yaml(std::path::Path::new("cedargate.yaml"), text).is_ok()
    );
    settings.require_client_cert = false;
    let mut config = test_config(PolicySource::Embedded);
    config.tls = Some(settings);
    let server = TestServer::with_config_no_client(config).await;
    check_over_tls(&server, &pki.server_ca.pem(), None)
        .await
        .expect("any TLS client, as configured");
}

#[tokio::test]
async fn handshakes_in_progress_are_bounded() {
    // Review round 2: TLS handshakes were unbounded in number; idle connections that never
    // finish a handshake could pile up for the whole handshake timeout each.
    cedargate::app::install_crypto_provider();
    let pki = Pki::new();
    let mut config = test_config(PolicySource::Embedded);
    config.tls = Some(pki.settings(true));
    let server = TestServer::with_config_no_client(config).await;
    let busy = |m: &str| {
        cedargate::testutil::metric_value(
            m,
            "cedargate_tls_handshake_failures_total",
            &[("reason", "busy")],
        )
    };
    // Idle connections that never send a ClientHello, past the bound.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(
            tokio::net::TcpStream::connect(server.grpc_addr())
                .await
                .unwrap(),
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while busy(&server.metrics().await) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no connection was turned away"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Closing them frees the places: a real client is served again.
    drop(idle);
    let envoy = pki
        .client_ca
        .issue(&["spiffe://shop.example/ns/mesh/sa/envoy"], &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while check_over_tls(&server, &pki.server_ca.pem(), Some(&envoy))
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

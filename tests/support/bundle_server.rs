//! A bundle server on 127.0.0.1 over HTTPS (a test CA's certificate): serves one bundle with
//! its ETag (`304` for a matching `If-None-Match`), or a fault: an HTTP status, a hang, or
//! the bundle cut in half. Counts requests and `304`s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cedargate::testutil::pki::TestCa;
use http_body_util::Full;
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject;

/// What the server answers.
#[derive(Debug, Clone)]
pub enum Mode {
    Serve,
    Status(u16),
    Hang,
    Truncate,
}

#[derive(Default)]
struct State {
    bundle: Vec<u8>,
    etag: String,
    mode: Option<Mode>,
}

pub struct BundleServer {
    pub port: u16,
    pub ca: TestCa,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicUsize>,
    not_modified: Arc<AtomicUsize>,
}

impl BundleServer {
    pub async fn start() -> Self {
        let ca = TestCa::new("bundle server CA");
        let cert = ca.issue(&[], &["localhost"]);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert.pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let requests = Arc::new(AtomicUsize::new(0));
        let not_modified = Arc::new(AtomicUsize::new(0));
        let (s, r, n) = (state.clone(), requests.clone(), not_modified.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (state, requests, not_modified) = (s.clone(), r.clone(), n.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                        let state = state.clone();
                        let requests = requests.clone();
                        let not_modified = not_modified.clone();
                        async move {
                            requests.fetch_add(1, Ordering::SeqCst);
                            let (bundle, etag, mode) = {
                                let state = state.lock().unwrap();
                                (state.bundle.clone(), state.etag.clone(), state.mode.clone())
                            };
                            let response = |status: u16, body: Vec<u8>| {
                                hyper::Response::builder()
                                    .status(status)
                                    .header("etag", &etag)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap()
                            };
                            Ok::<_, std::convert::Infallible>(match mode.unwrap_or(Mode::Serve) {
                                Mode::Status(code) => response(code, b"no".to_vec()),
                                Mode::Hang => {
                                    std::future::pending::<()>().await;
                                    response(200, Vec::new())
                                }
                                Mode::Truncate => {
                                    response(200, bundle[..bundle.len() / 2].to_vec())
                                }
                                Mode::Serve => {
                                    let matches = request
                                        .headers()
                                        .get("if-none-match")
                                        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
                                    if matches {
                                        not_modified.fetch_add(1, Ordering::SeqCst);
                                        response(304, Vec::new())
                                    } else {
                                        response(200, bundle)
                                    }
                                }
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            port,
            ca,
            state,
            requests,
            not_modified,
        }
    }

    /// Publishes `bundle` (served from now on, with a new ETag).
    pub fn publish(&self, bundle: Vec<u8>) {
        let mut state = self.state.lock().unwrap();
        state.etag = format!(
            "\"{}\"",
            bundle.len() ^ (bundle.first().copied().unwrap_or(0) as usize) ^ fastrand::usize(..)
        );
        state.bundle = bundle;
        state.mode = Some(Mode::Serve);
    }

    pub fn mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = Some(mode);
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}/bundles/orders.tar.gz", self.port)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn not_modified(&self) -> usize {
        self.not_modified.load(Ordering::SeqCst)
    }
}

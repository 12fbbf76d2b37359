//! Bundles pulled from a bundle server over HTTPS on 127.0.0.1: a new revision is put in
//! force; `304 Not Modified` costs no download; every fault (500, a hang, a truncated
//! archive, a wrong hash, a bad signature, an unsigned bundle where a key is required, a set
//! that does not validate, a rollback) keeps the last good set, counted by reason; at
//! start-up a server that cannot be reached means the copy kept on disk, or not ready (503
//! `no_policy_set`) until the server answers; and three cedargate processes pointed at one
//! server converge on the same revision.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedargate::config::{BundleSource, PolicySource, RemoteBundle};
use cedargate::policy::bundle::{self, keys};
use cedargate::testutil::{TestServer, check, metric_value, test_config};
use support::bundle_server::{BundleServer, Mode};

const CLOSED: &str = r#"@id("closed") forbid (principal, action, resource == Path::"/healthz");"#;

fn signing_key() -> keys::SigningKey {
    keys::SigningKey::from_pem(
        keys::SigningKey::generate(keys::Algorithm::Ed25519)
            .unwrap()
            .as_bytes(),
    )
    .unwrap()
}

/// The example set (plus `extra`) as a bundle of `revision`, signed with `key` if given.
fn bundle_of(revision: u64, key: Option<&keys::SigningKey>, extra: Option<&str>) -> Vec<u8> {
    let files: Vec<(&str, &str)> = extra.map(|e| ("extra.cedar", e)).into_iter().collect();
    let dir = support::policies::example_with(&files);
    bundle::build(dir.path(), revision, key).unwrap()
}

/// A signed bundle whose manifest matches an invalid set (a policy on an unknown action).
fn invalid_bundle(revision: u64, key: &keys::SigningKey) -> Vec<u8> {
    use std::io::Read;
    let good = bundle_of(revision, Some(key), None);
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(good.as_slice()));
    let mut files: Vec<(String, Vec<u8>)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            (name, bytes)
        })
        .collect();
    let broken = br#"permit (principal, action == Action::"nope", resource);"#.to_vec();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&broken))
    };
    let manifest_index = files
        .iter()
        .position(|(n, _)| n == bundle::MANIFEST)
        .unwrap();
    let mut manifest: bundle::Manifest = serde_json::from_slice(&files[manifest_index].1).unwrap();
    manifest.files.insert("orders.cedar".into(), digest);
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let signature = key.sign(&manifest_bytes).unwrap();
    for (name, bytes) in &mut files {
        match name.as_str() {
            bundle::MANIFEST => *bytes = manifest_bytes.clone(),
            bundle::SIGNATURE => *bytes = signature.clone().into_bytes(),
            "orders.cedar" => *bytes = broken.clone(),
            _ => {}
        }
    }
    let mut out = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, bytes) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        out.append_data(&mut header, name, bytes.as_slice())
            .unwrap();
    }
    out.into_inner().unwrap().finish().unwrap()
}

struct Setup {
    work: tempfile::TempDir,
    public: std::path::PathBuf,
    ca: std::path::PathBuf,
}

fn setup(server: &BundleServer, key: &keys::SigningKey) -> Setup {
    let work = tempfile::tempdir().unwrap();
    let public = work.path().join("bundle.pub");
    std::fs::write(&public, key.public_pem().unwrap()).unwrap();
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, server.ca.pem()).unwrap();
    Setup { work, public, ca }
}

fn source(server: &BundleServer, setup: &Setup, start_from_cache: bool) -> BundleSource {
    BundleSource {
        path: setup.work.path().join("kept.tar.gz"),
        public_key: Some(setup.public.clone()),
        allow_rollback: false,
        remote: Some(RemoteBundle {
            url: server.url(),
            poll_interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            max_bytes: 4 << 20,
            ca_file: Some(setup.ca.clone()),
            client_cert: None,
            client_key: None,
            bearer_token_file: None,
            start_from_cache,
        }),
    }
}

/// Waits (bounded) until `done` holds for the server's metrics.
async fn until(server: &TestServer, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = server.metrics().await;
        if done(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "{what}:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn failures(metrics: &str, reason: &str) -> f64 {
    metric_value(
        metrics,
        "cedargate_bundle_failures_total",
        &[("reason", reason)],
    )
}

#[tokio::test]
async fn a_polled_bundle_is_installed_and_every_fault_keeps_the_last_good_set() {
    cedargate::app::install_crypto_provider();
    let server = BundleServer::start().await;
    let key = signing_key();
    let setup = setup(&server, &key);
    server.publish(bundle_of(10, Some(&key), None));
    let source = source(&server, &setup, true);
    let mut cedargate =
        TestServer::with_config(test_config(PolicySource::Bundle(source.clone()))).await;
    cedargate.ready().await;
    let shared = Arc::clone(&cedargate.app.shared);
    assert_eq!(shared.bundle_revision(), Some(10));
    assert!(source.path.exists(), "the bundle in force is kept on disk");
    let health = || check("GET", "/healthz").build();
    assert_eq!(cedargate.check(health()).await.code(), tonic::Code::Ok);

    // Unchanged: the server answers 304, nothing is downloaded again.
    let seen = server.not_modified();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.not_modified() < seen + 2 {
        assert!(Instant::now() < deadline, "no conditional polls");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Each fault, one at a time: counted by its reason, the set in force unchanged.
    let stranger = signing_key();
    type Fault<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let faults: Vec<Fault> = vec![
        ("status", Box::new(|| server.mode(Mode::Status(500)))),
        ("timeout", Box::new(|| server.mode(Mode::Hang))),
        (
            "archive",
            Box::new(|| {
                server.publish(bundle_of(11, Some(&key), Some(CLOSED)));
                server.mode(Mode::Truncate);
            }),
        ),
        (
            "signature",
            Box::new(|| server.publish(bundle_of(11, Some(&stranger), Some(CLOSED)))),
        ),
        (
            "unsigned",
            Box::new(|| server.publish(bundle_of(11, None, Some(CLOSED)))),
        ),
        (
            "invalid",
            Box::new(|| server.publish(invalid_bundle(11, &key))),
        ),
        (
            "rollback",
            Box::new(|| server.publish(bundle_of(9, Some(&key), Some(CLOSED)))),
        ),
    ];
    for (reason, fault) in &faults {
        let before = failures(&cedargate.metrics().await, reason);
        fault();
        until(&cedargate, reason, |m| failures(m, reason) > before).await;
        assert_eq!(shared.bundle_revision(), Some(10), "{reason}");
        assert!(
            shared.is_ready(),
            "{reason}: still ready on the last good set"
        );
        assert_eq!(
            cedargate.check(health()).await.code(),
            tonic::Code::Ok,
            "{reason}"
        );
    }
    // A wrong hash: a file changed after the manifest was signed.
    let before = failures(&cedargate.metrics().await, "hash");
    let good = bundle_of(11, Some(&key), Some(CLOSED));
    let tampered = {
        use std::io::Read;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(good.as_slice()));
        let mut out = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            if name == "extra.cedar" {
                bytes = b"// nothing closed after all\n".to_vec();
            }
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            out.append_data(&mut header, &name, bytes.as_slice())
                .unwrap();
        }
        out.into_inner().unwrap().finish().unwrap()
    };
    server.publish(tampered);
    until(&cedargate, "hash", |m| failures(m, "hash") > before).await;
    assert_eq!(shared.bundle_revision(), Some(10));

    // A good newer revision: installed, and enforced.
    server.publish(good);
    let deadline = Instant::now() + Duration::from_secs(20);
    while shared.bundle_revision() != Some(11) {
        assert!(Instant::now() < deadline, "revision 11 was not installed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cedargate.check(health()).await.http_status(), Some(403));
    let metrics = cedargate.metrics().await;
    assert!(
        metrics.contains("cedargate_bundle_revision 11"),
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "cedargate_bundle_last_fetch_timestamp_seconds",
            &[]
        ) > 0.0
    );
    // What is kept on disk is the bundle in force.
    let kept = bundle::load(&source).unwrap();
    assert_eq!(kept.manifest.revision, 11);
}

#[tokio::test]
async fn at_start_up_an_unreachable_server_means_the_kept_copy_or_not_ready() {
    cedargate::app::install_crypto_provider();
    let server = BundleServer::start().await;
    let key = signing_key();
    let setup = setup(&server, &key);
    server.publish(bundle_of(5, Some(&key), None));
    server.mode(Mode::Status(503));

    // Nothing kept yet: not ready, every check 503 no_policy_set, until the server answers.
    let source = source(&server, &setup, true);
    let mut cedargate =
        TestServer::with_config(test_config(PolicySource::Bundle(source.clone()))).await;
    let shared = Arc::clone(&cedargate.app.shared);
    assert!(!shared.has_policy_set());
    let reply = cedargate.check(check("GET", "/healthz").build()).await;
    assert_eq!(reply.http_status(), Some(503));
    assert_eq!(reply.body()["error"], "no_policy_set");
    let readyz = reqwest::get(cedargate.admin_url("/readyz")).await.unwrap();
    assert_eq!(readyz.status(), 503);
    server.mode(Mode::Serve);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !shared.has_policy_set() {
        assert!(
            Instant::now() < deadline,
            "the first bundle was not installed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cedargate.ready().await;
    assert_eq!(shared.bundle_revision(), Some(5));
    assert_eq!(
        cedargate
            .check(check("GET", "/healthz").build())
            .await
            .code(),
        tonic::Code::Ok
    );
    cedargate.app.shutdown().await.unwrap();

    // The server down again: a restart serves the copy kept on disk, at once.
    server.mode(Mode::Status(500));
    let again = TestServer::with_config(test_config(PolicySource::Bundle(source.clone()))).await;
    assert!(again.app.shared.has_policy_set());
    assert_eq!(again.app.shared.bundle_revision(), Some(5));
    again.ready().await;
    // Unless the configuration says not to.
    let strict = source_without_cache(&source);
    let waiting = TestServer::with_config(test_config(PolicySource::Bundle(strict.clone()))).await;
    assert!(!waiting.app.shared.has_policy_set());
    waiting.app.shutdown().await.unwrap();
    again.app.shutdown().await.unwrap();

    // The server answers with an older revision than the copy kept on disk (revision 5, last
    // in force): a rollback at start-up too. The kept copy is served, and stays on disk.
    server.publish(bundle_of(3, Some(&key), None));
    let restarted =
        TestServer::with_config(test_config(PolicySource::Bundle(source.clone()))).await;
    assert_eq!(restarted.app.shared.bundle_revision(), Some(5));
    let metrics = restarted.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "cedargate_bundle_failures_total",
            &[("reason", "rollback")]
        ) >= 1.0
    );
    assert_eq!(bundle::load(&source).unwrap().manifest.revision, 5);
    let refusing = TestServer::with_config(test_config(PolicySource::Bundle(strict))).await;
    assert!(
        !refusing.app.shared.has_policy_set(),
        "neither the rollback nor the kept copy"
    );
}

fn source_without_cache(source: &BundleSource) -> BundleSource {
    let mut strict = source.clone();
    if let Some(remote) = &mut strict.remote {
        remote.start_from_cache = false;
    }
    strict
}

/// A `cedargate serve` process on `config`, with its admin address read from its log.
struct Process {
    child: Child,
    admin: String,
}

impl Process {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cedargate"))
            .args(["serve", "--config"])
            .arg(config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let admin = loop {
            let line = lines
                .next()
                .expect("cedargate logs before exiting")
                .unwrap();
            let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if value["message"] == "cedargate serving" {
                break value["admin_addr"].as_str().unwrap().to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, admin }
    }

    async fn revision(&self) -> Option<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("cedargate_bundle_revision "))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn three_processes_on_one_bundle_server_converge_on_each_revision() {
    cedargate::app::install_crypto_provider();
    let server = BundleServer::start().await;
    let key = signing_key();
    let setup = setup(&server, &key);
    server.publish(bundle_of(100, Some(&key), None));
    let processes: Vec<Process> = (0..3)
        .map(|n| {
            let config = setup.work.path().join(format!("cedargate-{n}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "listen: {{ grpc: 127.0.0.1:0, admin: 127.0.0.1:0 }}\npolicies:\n  bundle:\n    url: {}\n    path: kept-{n}.tar.gz\n    public_key: bundle.pub\n    ca_file: ca.pem\n    poll_interval: 200ms\n    timeout: 2s\n",
                    server.url()
                ),
            )
            .unwrap();
            Process::start(&config)
        })
        .collect();
    for revision in [100.0, 101.0, 102.0] {
        if revision > 100.0 {
            let extra = format!("// revision {revision}\n");
            server.publish(bundle_of(revision as u64, Some(&key), Some(&extra)));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut seen = Vec::new();
            for process in &processes {
                seen.push(process.revision().await);
            }
            if seen.iter().all(|r| *r == Some(revision)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not converged on {revision}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(server.requests() >= 9);
}

#[tokio::test]
async fn a_candidate_set_can_come_from_a_bundle_server() {
    cedargate::app::install_crypto_provider();
    let server = BundleServer::start().await;
    let key = signing_key();
    let setup = setup(&server, &key);
    server.publish(bundle_of(1, Some(&key), Some(CLOSED)));
    let live = support::policies::example_with(&[]);
    let mut config = test_config(PolicySource::Dir(live.path().to_owned()));
    config.candidate = Some(cedargate::config::CandidateSettings {
        source: PolicySource::Bundle(source(&server, &setup, false)),
        sample: 1.0,
    });
    let mut cedargate = TestServer::with_config(config).await;
    cedargate.ready().await;
    let shadow = |metrics: &str, candidate: &str| {
        metric_value(
            metrics,
            "cedargate_shadow_decisions_total",
            &[("live", "allow"), ("candidate", candidate)],
        )
    };
    let before = cedargate.metrics().await;
    let reply = cedargate.check(check("GET", "/healthz").build()).await;
    assert_eq!(
        reply.code(),
        tonic::Code::Ok,
        "the candidate is never enforced"
    );
    let after = until(&cedargate, "the candidate's deny", |m| {
        shadow(m, "deny") - shadow(&before, "deny") >= 1.0
    })
    .await;
    assert_eq!(shadow(&after, "deny") - shadow(&before, "deny"), 1.0);
    assert_eq!(
        cedargate.app.shared.bundle_revision(),
        None,
        "the live set is the directory"
    );

    // A new candidate revision that opens the page again replaces it.
    server.publish(bundle_of(2, Some(&key), Some("// open again\n")));
    let first = cedargate.app.shared.candidate_version();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cedargate.app.shared.candidate_version() == first {
        assert!(
            Instant::now() < deadline,
            "the new candidate was not installed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = cedargate.metrics().await;
    cedargate.check(check("GET", "/healthz").build()).await;
    until(&cedargate, "the new candidate's allow", |m| {
        shadow(m, "allow") - shadow(&before, "allow") >= 1.0
    })
    .await;
}

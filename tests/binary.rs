//! The `cedargate` binary itself: `serve` without a config file runs the embedded example set,
//! answers a Check, survives SIGHUP (nothing to reload), and exits 0 on SIGTERM after
//! draining; a bad config exits 2 naming the file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use cedargate::testutil::{CHECKOUT, Reply, check, metric_value};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

const BIN: &str = env!("CARGO_BIN_EXE_cedargate");

/// A workload's `POST /orders`, which the example set allows.
async fn assert_allowed(client: &mut AuthorizationClient<tonic::transport::Channel>) {
    let reply = client
        .check(check("POST", "/orders").peer(CHECKOUT).build())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(Reply(reply).code(), tonic::Code::Ok);
}

/// The `/metrics` text at `url`.
async fn scrape(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// Kills the server if the test fails before it exits, so a failure never leaves it running
/// (holding the test's output open).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

#[tokio::test]
async fn serve_without_config_runs_the_embedded_example() {
    cedargate::app::install_crypto_provider();
    let mut child = Command::new(BIN)
        .args(["serve", "--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    // Readiness: the JSON log line that reports the bound addresses.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let serving: serde_json::Value = loop {
        let line = lines.next().expect("server logs before exiting").unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        if value["message"] == "cedargate serving" {
            break value;
        }
    };
    let grpc = serving["grpc_addr"].as_str().unwrap().to_owned();
    let metrics_url = format!("http://{}/metrics", serving["admin_addr"].as_str().unwrap());
    // No `Some(…)` or other Rust debug text in the JSON line: no API listener, no field.
    assert!(serving.get("api_addr").is_none(), "{serving}");

    // Before any check or reload: the policy version and the staleness gauges are there.
    let metrics = scrape(&metrics_url).await;
    assert_eq!(
        metric_value(&metrics, "cedargate_policy_info", &[]),
        1.0,
        "{metrics}"
    );
    let loaded = metric_value(
        &metrics,
        "cedargate_policy_last_load_timestamp_seconds",
        &[],
    );
    assert!(loaded > 1.7e9, "{metrics}");
    assert!(
        metrics.contains("\ncedargate_policy_age_seconds "),
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, "process_resident_memory_bytes", &[]) > 0.0,
        "{metrics}"
    );
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    assert_allowed(&mut client).await;

    // Every metric family rendered has HELP text.
    let metrics = scrape(&metrics_url).await;
    let families: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| metrics.contains(&format!("# TYPE {base} histogram")))
                .unwrap_or(name)
        })
        .collect();
    assert!(families.contains("cedargate_decisions_total"), "{metrics}");
    for family in families {
        assert!(
            metrics.contains(&format!("# HELP {family} ")),
            "no HELP for {family}:\n{metrics}"
        );
    }

    // SIGHUP has nothing to reload without a policy directory: a log line, not an exit.
    let hangup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    loop {
        let line = lines.next().expect("server logs after SIGHUP").unwrap();
        if line.contains("SIGHUP: nothing to reload") {
            break;
        }
    }
    assert_allowed(&mut client).await;

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    // Wait off the runtime, so the client's connection task can answer the server's GOAWAY:
    // the drain then ends when the connection closes, not at the drain timeout.
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
    assert!(
        !rest.iter().any(|l| l.contains("drain timeout")),
        "{rest:?}"
    );
    drop(client);
}

#[test]
fn bad_config_exits_2_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cedargate.yaml");
    std::fs::write(&path, "listen:\n  grcp: 127.0.0.1:9191\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("{}:2:3", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("unknown field `grcp`"), "{stderr}");
}

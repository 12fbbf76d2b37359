//! The `cedargate` binary itself: `serve` without a config file runs the embedded example set,
//! answers a Check, and exits 0 on SIGTERM after draining; a bad config exits 2 naming the file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use cedargate::testutil::{CHECKOUT, Reply, check};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

const BIN: &str = env!("CARGO_BIN_EXE_cedargate");

#[tokio::test]
async fn serve_without_config_runs_the_embedded_example() {
    let mut child = Command::new(BIN)
        .args(["serve", "--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let reply = client
        .check(check("POST", "/orders").peer(CHECKOUT).build())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(Reply(reply).code(), tonic::Code::Ok);

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

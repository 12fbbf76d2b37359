//! The Unix-socket Check listener: created with its directory 0700 and the socket 0600, served
//! over a real tonic client on the socket, peer UIDs checked with SO_PEERCRED, unsafe
//! directories and foreign files refused at start-up, a stale socket replaced, and the socket
//! removed at shutdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cedargate::app;
use cedargate::config::{Config, GrpcListen, PolicySource};
use cedargate::testutil::{Reply, check, test_config};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

fn unix_config(path: &Path, allowed: Vec<u32>) -> Config {
    let mut config = test_config(PolicySource::Embedded);
    config.listen.grpc = GrpcListen::Unix(path.to_owned());
    config.listen.unix_allowed_uids = allowed;
    config
}

async fn channel(path: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://cedargate.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

async fn check_over(path: &Path) -> Result<Reply, String> {
    let channel = channel(path.to_owned()).await.map_err(|e| e.to_string())?;
    AuthorizationClient::new(channel)
        .check(check("GET", "/healthz").build())
        .await
        .map(|r| Reply(r.into_inner()))
        .map_err(|e| e.to_string())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn serves_checks_on_a_private_socket_and_removes_it_at_shutdown() {
    app::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("run/cedargate/check.sock");
    let server = app::build(unix_config(&path, Vec::new())).await.unwrap();
    assert_eq!(server.grpc_addr, None);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&path), 0o600);
    let reply = check_over(&path).await.unwrap();
    assert_eq!(reply.code(), tonic::Code::Ok);
    server.shutdown().await.unwrap();
    assert!(!path.exists(), "the socket is removed at shutdown");
}

#[tokio::test]
async fn only_listed_peer_uids_may_connect() {
    app::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sock");
    // This process's UID: the owner of a file it creates.
    let me = std::fs::metadata(tmp.path()).unwrap().uid();

    let path = dir.join("allowed.sock");
    let server = app::build(unix_config(&path, vec![me])).await.unwrap();
    assert_eq!(check_over(&path).await.unwrap().code(), tonic::Code::Ok);
    server.shutdown().await.unwrap();

    let path = dir.join("refused.sock");
    let server = app::build(unix_config(&path, vec![me.wrapping_add(4242)]))
        .await
        .unwrap();
    let refused = check_over(&path).await;
    assert!(refused.is_err(), "{refused:?}");
    let metrics = reqwest::get(format!("http://{}/metrics", server.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"cedargate_rejected_total{reason="peer_uid"}"#),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unsafe_directories_and_foreign_files_are_refused() {
    app::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let open_dir = tmp.path().join("shared");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = app::build(unix_config(&open_dir.join("c.sock"), Vec::new()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("mode 755") && err.contains("0700"), "{err}");

    let private = tmp.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = private.join("c.sock");
    std::fs::write(&file, "not a socket").unwrap();
    let err = app::build(unix_config(&file, Vec::new()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "not a socket",
        "left alone"
    );

    // A stale socket from a crashed process is replaced.
    std::fs::remove_file(&file).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&file).unwrap());
    assert!(file.exists());
    let server = app::build(unix_config(&file, Vec::new())).await.unwrap();
    assert_eq!(check_over(&file).await.unwrap().code(), tonic::Code::Ok);

    // A live socket (this server's) is not taken over by a second instance.
    let err = app::build(unix_config(&file, Vec::new()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("in use"), "{err}");
    assert_eq!(
        check_over(&file).await.unwrap().code(),
        tonic::Code::Ok,
        "still served"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn group_access_opens_the_socket_to_the_group_only() {
    app::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("grp/check.sock");
    let mut config = unix_config(&path, Vec::new());
    config.listen.unix_group_access = true;
    let server = app::build(config).await.unwrap();
    assert_eq!(mode(path.parent().unwrap()), 0o750);
    assert_eq!(mode(&path), 0o660);
    // Shutdown removes only the socket it created: one that replaced it (a newer instance's)
    // stays.
    std::fs::remove_file(&path).unwrap();
    let newer = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    server.shutdown().await.unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    drop(newer);
}

//! The listeners' side: Envoy's `envoy.service.auth.v3.Authorization/Check` over gRPC, plus
//! `grpc.health.v1` (following readiness, `health`) and server reflection; and the same
//! decisions over plain HTTP (`http`: Envoy's `http_service`, forward-auth proxies). `envoy`
//! translates protobuf in and out; `check` runs the stages for both.

pub mod check;
pub mod envoy;
pub mod health;
pub mod http;
pub mod reflection;
pub mod shadow;
pub mod tls;
#[cfg(unix)]
pub mod unix;

pub use check::{CheckService, Shared};

/// The next accepted connection of a listener feeding a connection stream, or `None` once the
/// stream's receiver is gone. Accept errors (out of file descriptors and the like) are logged
/// and retried after a short pause instead of spinning.
pub(crate) async fn next_connection<T, C, F>(
    sender: &tokio::sync::mpsc::Sender<T>,
    mut accept: impl FnMut() -> F,
) -> Option<C>
where
    F: std::future::Future<Output = std::io::Result<C>>,
{
    loop {
        let accepted = tokio::select! {
            () = sender.closed() => return None,
            accepted = accept() => accepted,
        };
        match accepted {
            Ok(connection) => return Some(connection),
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

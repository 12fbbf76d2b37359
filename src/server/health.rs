//! gRPC health (`grpc.health.v1`) that says what `/readyz` says: `NOT_SERVING` until a policy
//! set is loaded and every issuer has a key set, `SERVING` from then on, and `NOT_SERVING`
//! again as soon as a shutdown starts draining. Envoy's `grpc_health_check` and Kubernetes
//! `grpc:` probes read it, so a cedargate that would deny every token for want of keys is
//! taken out of rotation instead of being sent traffic.
//!
//! Both the whole server (`""`, what Kubernetes and Envoy ask by default) and
//! `envoy.service.auth.v3.Authorization` report the same status.

use std::sync::Arc;

use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::check::{CheckService, Shared};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;

/// The service names whose status follows readiness.
fn names() -> [&'static str; 2] {
    [
        "",
        <AuthorizationServer<CheckService> as NamedService>::NAME,
    ]
}

/// Sets every followed service to `ready`.
pub async fn report(reporter: &HealthReporter, ready: bool) {
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in names() {
        reporter.set_service_status(name, status).await;
    }
}

/// Reports `SERVING` once the server is ready (keys are kept once loaded, so readiness only
/// turns false again at shutdown, which reports that itself after stopping this task).
pub async fn follow(shared: Arc<Shared>, reporter: HealthReporter) {
    shared.authn.wait_ready().await;
    if shared.is_ready() {
        report(&reporter, true).await;
    }
}

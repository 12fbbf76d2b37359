//! The gRPC side: Envoy's `envoy.service.auth.v3.Authorization/Check`, plus `grpc.health.v1`
//! and server reflection. `envoy` translates protobuf in and out; `check` runs the stages.

pub mod check;
pub mod envoy;
pub mod reflection;
pub mod tls;
#[cfg(unix)]
pub mod unix;

pub use check::{CheckService, Shared};

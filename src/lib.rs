//! cedargate: an external authorizer for Envoy and Istio. Envoy asks over the ext_authz gRPC API
//! whether a request may pass; cedargate normalises the request, establishes who is asking,
//! maps both into a Cedar request and answers with Cedar's decision, failing closed.
//!
//! Data flow, one module per stage: [`server`] (protobuf in) → [`request`] (normalise) →
//! [`identity`] (who presented what) → [`entities`] (the resource's entity from the
//! application, when fetched) → [`decide`] (the decision core: route, identity rules,
//! [`policy`] mapping and engine, pure) → [`decision`] (evaluation + envelope → answer) →
//! [`server`] (protobuf out). Around it: [`config`], [`app`], [`admin`], [`api`] (Explain, Status),
//! [`telemetry`], [`reload`], [`cli`] (serve, validate, test, check).

pub mod admin;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod decide;
pub mod decision;
pub mod entities;
pub mod http_client;
pub mod identity;
pub mod policy;
pub mod record;
pub mod reload;
pub mod request;
pub mod server;
pub mod telemetry;
pub mod text;

#[cfg(any(test, feature = "testutil"))]
pub mod testutil;

//! cedargate's own gRPC API, `cedargate.v1.AuthorizerService` (`proto/cedargate/v1/`):
//! `Explain` decides a CheckRequest exactly as Check does and returns the Cedar request that
//! was built, the determining policies and the evaluation errors; `Status` reports the policy
//! set and the token issuers. Served only on `listen.api` (off by default), never on the Check
//! port. [`explain_response`] is also what `cedargate check` prints offline, so the offline and
//! the remote answer have one shape.

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use crate::decision::{Decision, DenyReason, Outcome};
use crate::server::Shared;
use crate::server::check::{self, Explained};

/// Code generated from `proto/cedargate/v1/authorizer.proto` by `build.rs`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
pub mod pb {
    tonic::include_proto!("cedargate.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/cedargate_v1_descriptor.binpb"));
}

use pb::authorizer_service_server::{AuthorizerService, AuthorizerServiceServer};

/// The service over the same shared state as Check.
#[derive(Debug, Clone)]
pub struct Api {
    shared: Arc<Shared>,
}

impl Api {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The tonic service, with the Check message size limit.
    pub fn server(self) -> AuthorizerServiceServer<Self> {
        let limit = self.shared.limits.max_request_bytes.saturating_add(64);
        AuthorizerServiceServer::new(self).max_decoding_message_size(limit)
    }
}

#[tonic::async_trait]
impl AuthorizerService for Api {
    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let Some(_permit) = self.shared.admit_explain() else {
            return Err(Status::resource_exhausted(
                "too many Explain calls at once; Check is not affected",
            ));
        };
        let budget = check::deadline(self.shared.limits.check_timeout, request.metadata());
        let bytes = request.into_inner().check_request;
        if bytes.len() > self.shared.limits.max_request_bytes {
            return Err(Status::out_of_range(
                "check_request is larger than limits.max_request_bytes",
            ));
        }
        let check_request =
            envoy_types::pb::envoy::service::auth::v3::CheckRequest::decode(bytes.as_slice())
                .map_err(|err| {
                    Status::invalid_argument(format!(
                        "check_request is not an envoy.service.auth.v3.CheckRequest: {err}"
                    ))
                })?;
        let explained = check::explain(&self.shared, check_request, budget).await;
        Ok(Response::new(explain_response(
            &explained,
            &self.shared.options,
        )))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(status_response(&self.shared)))
    }
}

/// How a policy test names a decision: allow, unauthenticated (401) or deny (anything else).
pub fn outcome(decision: &Decision) -> pb::Outcome {
    match decision.outcome() {
        Outcome::Allow => pb::Outcome::Allow,
        Outcome::Deny(DenyReason::Unauthenticated(_)) => pb::Outcome::Unauthenticated,
        Outcome::Deny(_) => pb::Outcome::Deny,
    }
}

/// The Explain answer for one decision.
/// `options` names the credentials (headers, query parameters) never shown.
pub fn explain_response(
    explained: &Explained,
    options: &crate::server::check::CheckOptions,
) -> pb::ExplainResponse {
    let Explained { decision, call } = explained;
    let answer = decision.answer();
    let (message, errors) = match decision.outcome() {
        Outcome::Allow => (String::new(), Vec::new()),
        Outcome::Deny(DenyReason::PolicyError(failed)) => (
            DenyReason::PolicyError(Vec::new()).to_string(),
            failed
                .iter()
                .map(|f| pb::PolicyError {
                    policy_id: f.policy_id.clone(),
                    message: f.message.clone(),
                })
                .collect(),
        ),
        Outcome::Deny(_) => (decision.deny_message().unwrap_or_default(), Vec::new()),
    };
    let cedar_request = call.as_ref().map(|call| pb::CedarRequest {
        principal: call.principal.to_string(),
        action: call.action.to_string(),
        resource: call.resource.to_string(),
        context_json: call
            .request
            .context()
            .and_then(|c| c.to_json_value().ok())
            .map_or_else(String::new, |v| v.to_string()),
        entities_json: call.entities.to_json_value().map_or_else(
            |err| format!("\"cannot render: {err}\""),
            |mut entities| {
                tidy_entities(&mut entities, options);
                entities.to_string()
            },
        ),
    });
    pb::ExplainResponse {
        outcome: outcome(decision).into(),
        reason: decision.reason_code().to_owned(),
        message,
        http_status: answer.http_status.map_or(0, u32::from),
        enforced: decision.envelope.enforced,
        cedar_request,
        determining_policies: if matches!(
            decision.outcome(),
            Outcome::Deny(DenyReason::PolicyError(_))
        ) {
            Vec::new()
        } else {
            decision.evaluation.policy_ids.clone()
        },
        errors,
        policy_version: decision
            .evaluation
            .version
            .as_deref()
            .unwrap_or_default()
            .to_owned(),
        headers: answer
            .headers
            .iter()
            .map(|(name, value)| pb::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        headers_to_remove: answer.headers_to_remove,
        request_id: decision.envelope.request_id.clone(),
    }
}

/// Credentials never leave in an explanation: the values of the request's credential headers
/// (`authorization`, `cookie`, a configured token header, …) and query parameters
/// (`access_token`, a configured token parameter) are replaced. Entities are sorted by type
/// and id so that an explanation reads the same every time.
fn tidy_entities(entities: &mut serde_json::Value, options: &crate::server::check::CheckOptions) {
    let Some(list) = entities.as_array_mut() else {
        return;
    };
    for entity in list.iter_mut() {
        let kind = entity
            .pointer("/uid/type")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let secret = |name: &str| match kind.as_deref() {
            Some("HttpHeaders") => {
                crate::config::NEVER_LOGGED.contains(&name)
                    || options
                        .secret_headers
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(name))
            }
            Some("HttpQuery") => options.secret_query.iter().any(|s| s == name),
            _ => false,
        };
        if let Some(tags) = entity
            .get_mut("tags")
            .and_then(serde_json::Value::as_object_mut)
        {
            for (name, value) in tags.iter_mut() {
                if secret(name) {
                    *value = serde_json::Value::String("[redacted]".into());
                }
            }
        }
    }
    let key = |entity: &serde_json::Value| {
        let part = |p: &str| {
            entity
                .pointer(p)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        (part("/uid/type"), part("/uid/id"))
    };
    list.sort_by_key(key);
}

/// The Status answer.
pub fn status_response(shared: &Shared) -> pb::StatusResponse {
    let snapshot = shared.snapshot.load();
    let issuers = shared
        .authn
        .issuers()
        .map(|state| pb::Issuer {
            issuer: state.config.issuer.clone(),
            principal_type: state.config.principal_type.clone(),
            jwks_source: crate::identity::jwks::describe(&state.config.jwks),
            key_ids: state.keys.keys().kids().map(str::to_owned).collect(),
            last_refresh: state
                .keys
                .last_refresh()
                .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        })
        .collect();
    pb::StatusResponse {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        policy_version: snapshot.version.to_string(),
        policy_count: u32::try_from(snapshot.policies.policies().count()).unwrap_or(u32::MAX),
        issuers,
        ready: shared.is_ready(),
        dry_run: shared.options.dry_run,
    }
}

/// Server reflection for the API listener: cedargate.v1 only.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

/// [`reflection`] for clients that speak only `grpc.reflection.v1alpha`.
pub fn reflection_v1alpha() -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_are_redacted_in_headers_and_query() {
        let options =
            crate::server::check::CheckOptions::with_secrets(&crate::config::TokenSource {
                header: Some("x-auth-token".into()),
                cookie: None,
                query: Some("token".into()),
            });
        let mut entities = json!([
            { "uid": { "type": "HttpQuery", "id": "request" }, "attrs": {}, "parents": [],
              "tags": { "token": "t1", "access_token": "t2", "page": "2" } },
            { "uid": { "type": "HttpHeaders", "id": "request" }, "attrs": {}, "parents": [],
              "tags": { "authorization": "Bearer t3", "cookie": "s=t4", "x-auth-token": "t5", "accept": "*/*" } },
            { "uid": { "type": "TokenClaims", "id": "request" }, "attrs": {}, "parents": [],
              "tags": { "token": "a claim, not a credential" } },
        ]);
        tidy_entities(&mut entities, &options);
        let text = entities.to_string();
        for secret in ["t1", "t2", "t3", "t4", "t5"] {
            assert!(
                !text.contains(&format!("\"{secret}\"")) && !text.contains(&format!("{secret}\"")),
                "{secret} in {text}"
            );
        }
        // Sorted by type: HttpHeaders, HttpQuery, TokenClaims.
        assert_eq!(entities[0]["tags"]["accept"], "*/*");
        assert_eq!(entities[1]["tags"]["page"], "2");
        assert_eq!(entities[1]["tags"]["token"], "[redacted]");
        assert_eq!(entities[2]["tags"]["token"], "a claim, not a credential");
    }
}

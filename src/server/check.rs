//! The Check handler: admission (in-flight cap), then five stages — read the protobuf,
//! normalise the request, resolve the identity, map to Cedar and evaluate, answer — with every
//! failure a deny and a panic in any stage caught and answered as a deny.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::envoy::{self, CheckInput};
use crate::config::Limits;
use crate::decision::{Decision, DenyReason, IDENTITY_HEADER_PREFIX, Outcome};
use crate::identity::Identity;
use crate::policy::engine::{self, Verdict};
use crate::policy::{Snapshot, mapping};
use crate::{request, telemetry};

/// State shared by the Check service and the admin listener.
#[derive(Debug)]
pub struct Shared {
    /// The policy set in force; a reload swaps it whole, readers never wait.
    pub snapshot: ArcSwap<Snapshot>,
    pub limits: Limits,
    /// False while starting and while draining.
    pub ready: AtomicBool,
    inflight: Semaphore,
}

impl Shared {
    pub fn new(snapshot: Snapshot, limits: Limits) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            limits,
            ready: AtomicBool::new(false),
            inflight: Semaphore::new(limits.max_inflight),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// `envoy.service.auth.v3.Authorization`.
#[derive(Debug, Clone)]
pub struct CheckService {
    shared: Arc<Shared>,
}

impl CheckService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // Shed load at once rather than queue: Envoy's timeout then fails closed.
        let Ok(_permit) = self.shared.inflight.try_acquire() else {
            telemetry::rejected("overload");
            return Err(Status::unavailable("cedargate is over its in-flight limit"));
        };
        let started = Instant::now();
        let input = envoy::input(request.into_inner());
        let snapshot = self.shared.snapshot.load();
        let limits = self.shared.limits;
        let decision =
            std::panic::catch_unwind(AssertUnwindSafe(|| decide(&snapshot, &limits, input)))
                .unwrap_or_else(|_| {
                    Decision::early(
                        String::new(),
                        DenyReason::Internal("a check stage panicked".into()),
                    )
                });
        telemetry::decided(&decision, started.elapsed());
        Ok(Response::new(envoy::response(decision.answer())))
    }
}

/// Decides one check against one snapshot: the whole pipeline, without I/O.
pub fn decide(snapshot: &Snapshot, limits: &Limits, input: CheckInput) -> Decision {
    let CheckInput {
        http,
        peer,
        extensions,
    } = input;
    let Some(raw) = http else {
        return Decision::early(
            String::new(),
            DenyReason::BadRequest(request::RequestError::MissingHttp),
        );
    };
    let fallback_id = raw.id.clone();
    let http = match request::normalise(raw, limits.max_path_bytes) {
        Ok(http) => http,
        Err(err) => return Decision::early(fallback_id, DenyReason::BadRequest(err)),
    };
    let identity = Identity { peer };
    let mut decision = Decision::early(http.request_id.clone(), DenyReason::PolicyDenied);
    decision.peer_spiffe_id = identity.peer.spiffe_id.as_ref().map(ToString::to_string);
    decision.client_identity_headers = http
        .headers
        .keys()
        .filter(|name| name.starts_with(IDENTITY_HEADER_PREFIX))
        .cloned()
        .collect();

    let call = match mapping::map(snapshot, &http, &identity, &extensions) {
        Ok(call) => call,
        Err(err) if err.is_unknown_action() => return deny(decision, DenyReason::NoRoute(err)),
        Err(err) => return deny(decision, DenyReason::Mapping(err)),
    };
    decision.principal = Some(call.principal.to_string());
    decision.action = Some(call.action.to_string());
    decision.resource = Some(call.resource.to_string());
    match engine::evaluate(snapshot, &call) {
        Verdict::Allow { determining } => {
            decision.policy_ids = determining;
            decision.outcome = Outcome::Allow;
        }
        Verdict::Deny { determining } => {
            decision.policy_ids = determining;
        }
        Verdict::Error { failed } => {
            decision.policy_ids = failed.iter().map(|f| f.policy_id.clone()).collect();
            decision.outcome = Outcome::Deny(DenyReason::PolicyError(failed));
        }
    }
    decision
}

fn deny(mut decision: Decision, reason: DenyReason) -> Decision {
    decision.outcome = Outcome::Deny(reason);
    decision
}

//! The policy side: loading a policy set into an immutable [`Snapshot`], matching routes,
//! mapping a normalised request and identity into a Cedar request, and evaluating it.
//!
//! Data flows `store` (load, validate, index into `slices`) → `routes` (which action and
//! resource a path means) → `mapping` (principal, action, resource, context, entities) →
//! `engine` (the Cedar decision, on the slice of policies that can apply); `decisions` keeps
//! a token's verdicts per snapshot so that the same inputs are not evaluated twice.

pub mod body;
pub mod bundle;
pub mod claims;
pub mod decisions;
pub mod engine;
pub mod index;
pub mod mapping;
pub mod problem;
pub mod reads;
pub mod routes;
pub mod shapes;
pub mod slices;
pub mod store;
pub mod validation;

pub use store::{PolicyLoadError, Snapshot};

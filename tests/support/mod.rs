//! Shared by the tests over real sockets: a real Envoy binary (found or installed once), Envoy
//! processes running the shipped configurations with test ports and files, a recording
//! upstream on 127.0.0.1, and copies of the example policy set.
#![allow(dead_code)]

pub mod bundle_server;
pub mod envoy;
pub mod policies;
pub mod upstream;

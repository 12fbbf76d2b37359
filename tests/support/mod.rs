//! Shared by the Envoy end-to-end tests: a real Envoy binary (found or installed once), Envoy
//! processes running the shipped configurations with test ports and files, and a recording
//! upstream on 127.0.0.1.
#![allow(dead_code)]

pub mod envoy;
pub mod upstream;

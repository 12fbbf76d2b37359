//! gRPC server reflection (`grpc.reflection.v1`), so grpcurl can call Check without protos.
//! Envoy's descriptors are pruned from those envoy-types ships by `scripts/prune-descriptors.py`
//! into `proto/descriptors/envoy_ext_authz.binpb`; regenerate it when envoy-types is upgraded.

use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

const ENVOY_EXT_AUTHZ: &[u8] = include_bytes!("../../proto/descriptors/envoy_ext_authz.binpb");

/// The reflection service for Check and health.
pub fn service()
-> Result<ServerReflectionServer<impl ServerReflection>, tonic_reflection::server::Error> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ENVOY_EXT_AUTHZ)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

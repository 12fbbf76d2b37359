//! gRPC server reflection (`grpc.reflection.v1`, and `v1alpha` for older clients), so grpcurl
//! can call Check without protos.
//! Envoy's descriptors are pruned from those envoy-types ships by `scripts/prune-descriptors.py`
//! into `proto/descriptors/envoy_ext_authz.binpb`; regenerate it when envoy-types is upgraded.

use tonic_reflection::server::{Builder, Error, v1, v1alpha};

const ENVOY_EXT_AUTHZ: &[u8] = include_bytes!("../../proto/descriptors/envoy_ext_authz.binpb");

fn builder() -> Builder<'static> {
    Builder::configure()
        .register_encoded_file_descriptor_set(ENVOY_EXT_AUTHZ)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The reflection service for Check and health.
pub fn service() -> Result<v1::ServerReflectionServer<impl v1::ServerReflection>, Error> {
    builder().build_v1()
}

/// The same for clients that speak only `grpc.reflection.v1alpha` (older grpcurl, Postman).
pub fn service_v1alpha()
-> Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>, Error> {
    builder().build_v1alpha()
}

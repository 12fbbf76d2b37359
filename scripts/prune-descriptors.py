#!/usr/bin/env python3
"""Writes proto/descriptors/envoy_ext_authz.binpb: the FileDescriptorSet of
envoy/service/auth/v3/external_auth.proto and every file it imports, pruned from the full set
that the envoy-types crate ships (src/generated/types.bin). cedargate serves it through gRPC
server reflection, so grpcurl and friends can call Check without local protos.

Usage: python3 scripts/prune-descriptors.py [path/to/types.bin]   (needs `pip install protobuf`)
Without an argument it looks for envoy-types in ~/.cargo/registry.
"""
import glob
import os
import sys

from google.protobuf import descriptor_pb2

ROOT = "envoy/service/auth/v3/external_auth.proto"


def main():
    if len(sys.argv) > 1:
        source = sys.argv[1]
    else:
        home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
        found = sorted(glob.glob(f"{home}/registry/src/*/envoy-types-*/src/generated/types.bin"))
        if not found:
            sys.exit("envoy-types not found in the cargo registry: run `cargo fetch` first")
        source = found[-1]
    full = descriptor_pb2.FileDescriptorSet()
    with open(source, "rb") as f:
        full.ParseFromString(f.read())
    by_name = {fd.name: fd for fd in full.file}
    keep, todo = [], [ROOT]
    seen = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        fd = by_name[name]
        fd.ClearField("source_code_info")  # comments: not needed for reflection
        keep.append(fd)
        todo.extend(fd.dependency)
    out = descriptor_pb2.FileDescriptorSet()
    out.file.extend(sorted(keep, key=lambda fd: fd.name))
    target = os.path.join(os.path.dirname(__file__), "..", "proto", "descriptors", "envoy_ext_authz.binpb")
    with open(target, "wb") as f:
        f.write(out.SerializeToString())
    print(f"{target}: {len(keep)} files from {source}")


if __name__ == "__main__":
    main()

//! Compiles `proto/` with protox (pure Rust), so building needs no system protoc.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "etcd/kv.proto",
    "etcd/rpc.proto",
    "etcd/v3lock.proto",
    "etcd/v3election.proto",
    "cella/v1/core.proto",
    "cella/v1/registry.proto",
    "cella/v1/lock.proto",
    "cella/v1/idgen.proto",
    "cella/v1/config.proto",
    "cella/v1/mq.proto",
    "cella/v1/resource.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let descriptors = protox::compile(PROTOS, [&root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("descriptors.bin");
    std::fs::write(&descriptor_path, descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .bytes(".")
        .compile_protos(PROTOS, &[root.to_string_lossy().as_ref()])?;

    // Proto3 JSON mapping for the REST gateway, with etcd's gateway's snake_case names.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptor_path)?)?
        .preserve_proto_field_names()
        .build(&[".etcdserverpb", ".mvccpb", ".cella"])?;
    Ok(())
}

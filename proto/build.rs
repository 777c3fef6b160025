//! Generates the tonic and prost types from `proto/` with a vendored `protoc`, so a fresh
//! machine needs no system protobuf compiler.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts run single-threaded before any other code reads the environment.
    std::env::set_var("PROTOC", protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/warren/admin/v1/admin.proto",
        "proto/warren/raft/v1/raft.proto",
        "proto/warren/queues/v1/queues.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("warren_descriptor.bin"))
        // `warrenctl --json` prints the replies as they are.
        .type_attribute(".warren", "#[derive(serde::Serialize)]")
        .field_attribute(
            ".warren.admin.v1.MessageInfo.body",
            "#[serde(serialize_with = \"crate::body_as_text\")]",
        )
        .compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}

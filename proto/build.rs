//! Compiles the `.proto` files with `protox` (a pure-Rust protobuf compiler), so a build never
//! needs a system `protoc`, then generates prost messages and tonic clients/servers from them.

/// Admin messages printed as they are by `federationctl`.
const PRINTED: [&str; 10] = [
    ".multimesh.admin.v1.PeerView",
    ".multimesh.admin.v1.ConfigStatus",
    ".multimesh.admin.v1.PeerCounters",
    ".multimesh.admin.v1.StatusResponse",
    ".multimesh.admin.v1.BackendStatus",
    ".multimesh.admin.v1.ObjectProblem",
    ".multimesh.admin.v1.WatchEvent",
    ".multimesh.admin.v1.SplitsResponse",
    ".multimesh.admin.v1.SplitView",
    ".multimesh.admin.v1.SplitBackendView",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/multimesh/catalog/v1/catalog.proto",
        "proto/multimesh/admin/v1/admin.proto",
        "proto/multimesh/routes/v1/routes.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let mut builder = tonic_prost_build::configure();
    // Admin answers that `federationctl -o json|yaml` prints as they are: the JSON names are
    // the proto's field names.
    for m in PRINTED {
        builder = builder.message_attribute(m, "#[derive(serde::Serialize)]");
    }
    builder
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

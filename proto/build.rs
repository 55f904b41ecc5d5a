//! Compiles the `.proto` files with `protox` (a pure-Rust protobuf compiler), so a build never
//! needs a system `protoc`, then generates prost messages and tonic clients/servers from them.

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
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

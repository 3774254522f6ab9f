//! Compiles the wire-compatible google.iam.v1, Policy Troubleshooter (v3 and v1) and Cloud Asset
//! (`AnalyzeIamPolicy`) protos under `proto/`
//! (server and client) with the
//! protoc shipped by `protoc-bin-vendored`, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    let files = [
        "proto/google/type/expr.proto",
        "proto/google/iam/v1/options.proto",
        "proto/google/iam/v1/policy.proto",
        "proto/google/iam/v1/iam_policy.proto",
        "proto/google/rpc/status.proto",
        "proto/google/cloud/policytroubleshooter/iam/v3/troubleshooter.proto",
        "proto/google/cloud/policytroubleshooter/v1/checker.proto",
        "proto/google/cloud/asset/v1/asset_service.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(
            config,
            &files.map(std::path::PathBuf::from),
            &[std::path::PathBuf::from("proto"), include],
        )?;
    Ok(())
}

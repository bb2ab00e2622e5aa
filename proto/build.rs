//! Generates the tonic/prost code for `ingest.proto` without a system `protoc`:
//! `protox` parses the file into a descriptor set, `tonic-prost-build` emits Rust.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ingest.proto");
    let fds = protox::compile(["ingest.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Batch payloads are shared, not copied, between spool and stream.
        .bytes(".hostpulse.v1.Batch.samples")
        .compile_fds(fds)?;
    Ok(())
}

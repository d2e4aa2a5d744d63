//! Compiles the protocol with protox, a pure-Rust protobuf compiler: no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/testfleet/v1/testfleet.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    // compile_fds emits no rerun-if-changed lines of its own.
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

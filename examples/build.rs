//! Compiles the example protos with a vendored `protoc`, so a machine with only the Rust
//! toolchain can build the examples.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY-free: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    println!("cargo:rerun-if-changed=proto");
    // A service that does not implement a method answers UNIMPLEMENTED for it.
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .compile_protos(&["proto/user.proto", "proto/order.proto"], &["proto"])?;
    Ok(())
}

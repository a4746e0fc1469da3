//! Tells rustc where libtasker is.  TASKER_LIB_DIR (a directory holding
//! libtasker.so) wins; otherwise `pkg-config --variable=libdir tasker` is
//! asked; otherwise the system linker paths are used.  The directory is also
//! put in the binaries' RPATH so `cargo test` and `cargo run` find the
//! library without LD_LIBRARY_PATH.  No bindgen: src/ffi.rs is written by hand.
use std::env;
use std::process::Command;

fn pkg_config_libdir() -> Option<String> {
    let out = Command::new("pkg-config")
        .args(["--variable=libdir", "tasker"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!dir.is_empty()).then_some(dir)
}

fn main() {
    println!("cargo:rerun-if-env-changed=TASKER_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-changed=build.rs");
    let dir = env::var("TASKER_LIB_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .or_else(pkg_config_libdir);
    if let Some(dir) = dir {
        println!("cargo:rustc-link-search=native={dir}");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}

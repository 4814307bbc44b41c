//! Build script. It guards the opt-in `turbo` feature: mozjpeg-sys quietly compiles its slow C
//! fallback when nasm is missing (3-4x slower than the default pure-Rust path, see
//! notes/codecs.md), which would make the "accelerated" build slower without telling anyone, so
//! it fails loudly instead. And it tells the tests whether a Postgres server is configured
//! (`cfg(postgres_tests)`), so that without one their Postgres runs show as ignored, with the
//! reason, instead of passing silently.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TEST_POSTGRES_URL");
    println!("cargo:rustc-check-cfg=cfg(postgres_tests)");
    if std::env::var_os("TEST_POSTGRES_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo:rustc-cfg=postgres_tests");
    }
    let turbo = std::env::var_os("CARGO_FEATURE_TURBO").is_some();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if turbo && (arch == "x86_64" || arch == "x86") {
        let nasm = std::env::var("NASM").unwrap_or_else(|_| "nasm".into());
        let ok = std::process::Command::new(&nasm)
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            panic!(
                "\n\nthe `turbo` feature needs nasm to build libjpeg-turbo's SIMD code, and `{nasm} -v` \
                 failed.\nInstall it (Debian/Ubuntu: apt-get install nasm; macOS: brew install nasm) \
                 or build without `--features turbo` (the default pure-Rust codec needs nothing).\n\n"
            );
        }
    }
}

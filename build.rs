//! Checks the native interface between the JVM and this library (see `rust/build/native_abi.rs`):
//!
//! - the build fails, saying which, when a `native` method of
//!   `java/duratom/Native.java` has no `Java_duratom_Native_*` export in
//!   `rust/jni.rs`, an export has no declaration, or their argument counts
//!   differ;
//! - the native-interface fingerprint (the signatures and the crate version) is stamped
//!   into the library as `DURATOM_NATIVE_ABI_FINGERPRINT`, which `Native` checks
//!   right after loading;
//! - the shared library exports only the `Java_*` symbols: a version script
//!   for GNU ld and lld (Linux); on macOS rustc's own exported-symbols list.

#[path = "rust/build/native_abi.rs"]
mod native_abi;

use std::path::Path;

fn main() {
    let java_path = "java/duratom/Native.java";
    let rust_path = "rust/jni.rs";
    println!("cargo:rerun-if-changed={java_path}");
    println!("cargo:rerun-if-changed={rust_path}");
    println!("cargo:rerun-if-changed=rust/build/native_abi.rs");

    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_else(|e| fail(&[format!("cannot read {p}: {e}")]));
    let java = native_abi::java_natives(&read(java_path)).unwrap_or_else(|e| fail(&[e]));
    let rust = native_abi::rust_exports(&read(rust_path)).unwrap_or_else(|e| fail(&[e]));
    if java.is_empty() {
        fail(&[format!("found no native method in {java_path}")]);
    }
    let problems = native_abi::mismatches(&java, &rust);
    if !problems.is_empty() {
        fail(&problems);
    }

    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    match native_abi::java_crate_version(&read(java_path)) {
        Some(v) if v == version => {}
        Some(v) => fail(&[format!("{java_path} has CRATE_VERSION \"{v}\" but Cargo.toml's version is {version}")]),
        None => fail(&[format!("{java_path} declares no CRATE_VERSION = \"...\" (the version its native-interface fingerprint uses)")]),
    }
    println!("cargo:rustc-env=DURATOM_NATIVE_ABI_FINGERPRINT={}", native_abi::fingerprint(&java, &version));

    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    // SQLite's locks as open-file-description locks (see the file): Linux only.
    println!("cargo:rerun-if-changed=rust/sqlite/ofd_locks.c");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        cc::Build::new().file("rust/sqlite/ofd_locks.c").compile("duratom_ofd_locks");
    }

    match std::env::var("CARGO_CFG_TARGET_OS").as_deref() {
        Ok("linux") | Ok("android") | Ok("freebsd") => {
            let script = Path::new(&out).join("exports.map");
            std::fs::write(&script, "{\n  global: Java_*;\n  local: *;\n};\n").expect("writing the version script");
            println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={}", script.display());
            // rustc's own version script makes every `#[no_mangle]` function
            // of every dependency global (the S3 SDK's crc-fast has dozens),
            // and the linker merges the scripts; this hides whatever comes
            // from the dependencies' archives, leaving this crate's exports.
            // zig's linker (scripts/release links through cargo-zigbuild)
            // refuses the option; there the crc-fast stand-in (patches/) has
            // no such functions, and check-native lists what is exported.
            println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
            let zig = std::env::var("RUSTC_LINKER").is_ok_and(|l| l.contains("zig"));
            if !zig {
                println!("cargo:rustc-cdylib-link-arg=-Wl,--exclude-libs=ALL");
            }
        }
        // Apple targets need nothing here: rustc hands the linker an
        // -exported_symbols_list of its own (here exactly the six Java_*
        // functions; scripts/check-native reads the export trie), ld64 exports
        // the union of all such lists, so a second list could only add to it;
        // everything else (the C of SQLite and ring included) stays hidden.
        // Not emitting a cc-style `-Wl,` argument also lets scripts/release
        // link macOS with ld64.lld directly (linker flavor ld64.lld).
        // Elsewhere (Windows) symbols are exported only when marked to be.
        _ => {}
    }
}

fn fail(problems: &[String]) -> ! {
    eprintln!("\nerror: the JNI native interface does not match (build.rs):");
    for p in problems {
        eprintln!("  - {p}");
    }
    eprintln!("Make each `native` method of java/duratom/Native.java and its Java_duratom_Native_* export in rust/jni.rs agree.\n");
    std::process::exit(1);
}

//! The native-interface check of `build.rs`: its reading of `Native.java` and `jni.rs`,
//! the messages a mismatch gives, the fingerprint stamped into the library,
//! and (on Linux) that the built library exports only the `Java_*` symbols.

#[path = "../../rust/build/native_abi.rs"]
#[allow(dead_code)]
mod native_abi;

use native_abi::{fingerprint, java_natives, mismatches, rust_exports, JavaNative};

fn source(path: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + path).unwrap()
}

#[test]
fn the_declarations_and_exports_of_this_tree_agree() {
    let java = java_natives(&source("java/duratom/Native.java")).unwrap();
    let rust = rust_exports(&source("rust/jni.rs")).unwrap();
    let names: Vec<&str> = java.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["append", "close", "commit", "delete", "fingerprint", "load", "open"]);
    let commit = java.iter().find(|j| j.name == "commit").unwrap();
    assert_eq!(commit.canonical(), "commit(long,byte[][],long,byte[],byte[])byte[]");
    assert_eq!(rust.iter().find(|r| r.name == "commit").unwrap().java_args, 5);
    let append = java.iter().find(|j| j.name == "append").unwrap();
    assert_eq!(append.canonical(), "append(long,byte[][],long,byte[])byte[]");
    assert_eq!(mismatches(&java, &rust), Vec::<String>::new());
}

#[test]
fn the_library_carries_the_fingerprint_of_these_sources() {
    let java = java_natives(&source("java/duratom/Native.java")).unwrap();
    assert_eq!(duratom::jni::FINGERPRINT, fingerprint(&java, env!("CARGO_PKG_VERSION")));
    assert_eq!(duratom::jni::FINGERPRINT.len(), 16);
    // Another signature or another version gives another fingerprint.
    let mut changed = java.clone();
    changed[0].params.push("int".into());
    assert_ne!(fingerprint(&changed, env!("CARGO_PKG_VERSION")), duratom::jni::FINGERPRINT);
    assert_ne!(fingerprint(&java, "9.9.9"), duratom::jni::FINGERPRINT);
    // FNV-1a 64 of the empty input and of "a", as published for the algorithm.
    assert_eq!(native_abi::fnv1a64(b""), 0xcbf29ce484222325);
    assert_eq!(native_abi::fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
}

#[test]
fn mismatches_are_named_one_by_one() {
    let java = java_natives(
        "class Native {
           /** native void ignored(); in a comment */
           static native long open(byte[] config);
           public static native void close(long handle);
           static native byte[] extra(long handle, final byte[] b);
           static String s = \"native int fake();\";
         }",
    )
    .unwrap();
    assert_eq!(java.len(), 3, "{java:?}");
    let rust = rust_exports(
        "pub extern \"system\" fn Java_duratom_Native_open<'l>(env: JNIEnv<'l>, _: JClass<'l>, c: JByteArray<'l>) -> jlong {}
         // pub extern \"system\" fn Java_duratom_Native_close(env: JNIEnv, _: JClass, h: jlong) {}
         pub extern \"system\" fn Java_duratom_Native_close(env: JNIEnv, _: JClass) {}
         pub extern \"system\" fn Java_duratom_Native_stale(env: JNIEnv, _: JClass) {}",
    )
    .unwrap();
    let problems = mismatches(&java, &rust);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    let says = |wanted: &str| assert!(problems.iter().any(|p| p.contains(wanted)), "{wanted:?} not in {problems:#?}");
    says("declares `native byte[] extra(long, byte[])` but rust/jni.rs exports no Java_duratom_Native_extra");
    says("Native.close takes 1 argument(s) in java/duratom/Native.java but Java_duratom_Native_close in rust/jni.rs takes 0");
    says("rust/jni.rs exports Java_duratom_Native_stale but java/duratom/Native.java declares no native method stale");

    let overloaded = vec![
        JavaNative { name: "load".into(), params: vec![], ret: "void".into() },
        JavaNative { name: "load".into(), params: vec!["long".into()], ret: "void".into() },
    ];
    let rust = rust_exports("fn Java_duratom_Native_load(e: JNIEnv, c: JClass) {}").unwrap();
    assert!(mismatches(&overloaded, &rust).iter().any(|p| p.contains("overloads native method load")));
}

/// The cdylib cargo built next to this test, if it is there.
#[cfg(target_os = "linux")]
#[test]
fn the_library_exports_only_the_java_symbols() {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let lib = [deps.join("libduratom.so"), deps.parent().unwrap().join("libduratom.so")]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no libduratom.so in {} or its parent: cargo builds the cdylib with the tests", deps.display()));
    let out = std::process::Command::new("nm")
        .args(["-D", "--defined-only", "--format=posix"])
        .arg(&lib)
        .output()
        .expect("nm (binutils) is needed to list the library's exports");
    assert!(out.status.success(), "nm failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let exported: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    let java = java_natives(&source("java/duratom/Native.java")).unwrap();
    let mut wanted: Vec<String> = java.iter().map(|j| format!("Java_duratom_Native_{}", j.name)).collect();
    wanted.sort();
    let mut got: Vec<String> = exported.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, wanted, "{} exports more or other than the Java_* functions", lib.display());
}

//! Builds the function libraries that tests load: C sources compiled with `cc` (or `$CC`)
//! at test time, and the Rust example cdylib built by a nested cargo into a target
//! directory of its own (no lock shared with the cargo running the test).
// Shared by several test binaries; each uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory for this test process's C builds.
pub fn c_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("functions-c-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// Compiles C source `src` (a path, or the text of a file) into `lib<name>.so`.
pub fn cc(name: &str, src: &str) -> PathBuf {
    cc_with(name, src, &[])
}

pub fn cc_with(name: &str, src: &str, flags: &[&str]) -> PathBuf {
    let dir = c_dir();
    let out = dir.join(format!("lib{name}.so"));
    let source = if src.ends_with(".c") {
        root().join(src)
    } else {
        let p = dir.join(format!("{name}.c"));
        std::fs::write(&p, src).unwrap();
        p
    };
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&compiler)
        .args([
            "-O2", "-Wall", "-Wextra", "-Werror", "-std=c11", "-shared", "-fPIC",
        ])
        .arg("-I")
        .arg(root().join("include"))
        .arg("-o")
        .arg(&out)
        .arg(&source)
        .arg("-lm")
        .args(flags)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {compiler:?}: {e}"));
    assert!(
        status.success(),
        "{compiler} failed on {}",
        source.display()
    );
    out
}

/// The C example `examples/functions/c/NAME.c`, compiled once per test process.
pub fn c_example(name: &str) -> &'static Path {
    static BUILT: OnceLock<std::sync::Mutex<std::collections::HashMap<String, &'static Path>>> =
        OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(path) = built.get(name) {
        return path;
    }
    let path: &'static Path =
        Box::leak(cc(name, &format!("examples/functions/c/{name}.c")).into_boxed_path());
    built.insert(name.to_string(), path);
    path
}

/// The Rust example library, built by a nested cargo into a target directory of its own
/// (no lock shared with the cargo running this test; incremental after the first time).
pub fn rust_example() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("example-functions");
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let status = Command::new(cargo)
            .args([
                "build",
                "--offline",
                "--quiet",
                "-p",
                "rafi-example-functions",
            ])
            .arg("--manifest-path")
            .arg(root().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("cannot run cargo");
        assert!(status.success(), "building rafi-example-functions failed");
        target.join("debug/librafi_example_functions.so")
    })
}

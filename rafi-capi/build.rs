//! The shared library's soname is `librafi.so.0` (the name it is installed under), so that
//! programs linked against the installed `librafi.so` load the major version they were
//! built for.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librafi.so.0");
}

//! Links release binaries without unwind tables (`.eh_frame`, 220 KB of a 2.5 MiB binary).
//!
//! The release profile has `panic = "abort"`: nothing ever unwinds, and the tables are read
//! only to print a backtrace when a panic asks for one. Without them a panic still prints its
//! message and location, then aborts; the backtrace it prints is empty. The C runtime's own
//! `crtbegin`/`crtend` tables stay: `crtbegin` refers to them.
//!
//! Only for release builds on Linux, and only the binary: test harnesses and debug builds keep
//! their tables (the test harness unwinds). `PROFILE` is `release` for the release profile,
//! whose `panic = "abort"` is fixed in Cargo.toml.

use std::env;
use std::fs;
use std::path::PathBuf;

const SCRIPT: &str = "\
SECTIONS { /DISCARD/ : { *(EXCLUDE_FILE(*crtbegin*.o *crtend*.o) .eh_frame) } } INSERT AFTER .text;
";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let release = env::var("PROFILE").as_deref() == Ok("release");
    let linux = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if !(release && linux) {
        return;
    }
    let script = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("no-unwind-tables.ld");
    fs::write(&script, SCRIPT).expect("write the linker script to OUT_DIR");
    println!("cargo:rustc-link-arg-bins=-Wl,--no-eh-frame-hdr");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}

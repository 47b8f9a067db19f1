//! Gives the shared library a versioned SONAME, `libvram_monitor.so.<major>`, the name a C
//! program records when it links with `-lvram_monitor` and the name the loader looks for at
//! run time. Release 0.x is ABI version 0 (`libvram_monitor.so.0`); the number goes up only
//! when the C ABI breaks.
//!
//! So that programs linked against the build tree (`target/<profile>/libvram_monitor.so`, as
//! the C tests and examples are) find that name at run time, this also puts a symlink
//! `libvram_monitor.so.<major> -> libvram_monitor.so` next to where cargo writes the library.
//! `scripts/install.sh` lays out the usual chain (`.so -> .so.0 -> .so.0.1.0`) in a prefix.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets CARGO_PKG_VERSION_MAJOR");
    let soname = format!("libvram_monitor.so.{major}");

    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" {
        // Only ELF platforms have SONAMEs; elsewhere the library keeps cargo's name.
        return;
    }
    // Applies to the cdylib only (not to the binaries, tests or the static library).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");

    if let Some(dir) = profile_dir() {
        link_soname(&dir, &soname);
    }
}

/// `target/<profile>` (or `target/<triple>/<profile>`): OUT_DIR is
/// `<profile dir>/build/libvram-monitor-<hash>/out`.
fn profile_dir() -> Option<PathBuf> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR")?);
    let dir = out.ancestors().nth(3)?.to_path_buf();
    dir.is_dir().then_some(dir)
}

/// Makes `<dir>/<soname>` a symlink to `libvram_monitor.so` (dangling until the library is
/// linked). Failing to make it is not a build failure: it only matters to C programs run from
/// the build tree, and they say which file they miss.
fn link_soname(dir: &Path, soname: &str) {
    let link = dir.join(soname);
    let target = Path::new("libvram_monitor.so");
    if std::fs::read_link(&link).ok().as_deref() == Some(target) {
        return;
    }
    let temp = dir.join(format!(".{soname}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let made = std::os::unix::fs::symlink(target, &temp).and_then(|_| std::fs::rename(&temp, &link));
    if let Err(error) = made {
        let _ = std::fs::remove_file(&temp);
        println!("cargo:warning=could not create {}: {error}", link.display());
    }
}

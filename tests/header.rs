//! The committed C header must be exactly what cbindgen generates from the source now.
//! `VRAM_MONITOR_BLESS=1 cargo test --test header` rewrites it.

use std::path::PathBuf;

#[test]
fn committed_header_matches_cbindgen_output() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&root)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("header is UTF-8");
    let path = root.join("include/vram_monitor.h");
    if std::env::var_os("VRAM_MONITOR_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write header");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/vram_monitor.h is stale: run `VRAM_MONITOR_BLESS=1 cargo test --test header` and commit it"
    );
}

#[test]
fn header_version_macros_match_the_crate_version() {
    let header = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include/vram_monitor.h")).unwrap();
    for (name, value) in [
        ("VRAM_MONITOR_VERSION_MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
        ("VRAM_MONITOR_VERSION_MINOR", env!("CARGO_PKG_VERSION_MINOR")),
        ("VRAM_MONITOR_VERSION_PATCH", env!("CARGO_PKG_VERSION_PATCH")),
    ] {
        assert!(header.contains(&format!("#define {name} {value}\n")), "{name} must be {value}");
    }
}

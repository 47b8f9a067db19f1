//! The committed C header, `include/vram_monitor.h` at the repository root, must be exactly
//! what cbindgen generates from this crate (the C ABI) now.
//! `VRAM_MONITOR_BLESS=1 cargo test -p vram-monitor-capi --test header` rewrites it.

use std::path::{Path, PathBuf};

/// This crate: crates/vram-monitor-capi.
fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `include/vram_monitor.h` of the repository (two folders up from this crate).
fn header_path() -> PathBuf {
    crate_dir().join("../../include/vram_monitor.h").components().collect::<PathBuf>()
}

#[test]
fn committed_header_matches_cbindgen_output() {
    let root = crate_dir();
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&root)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("header is UTF-8");
    let path = header_path();
    if std::env::var_os("VRAM_MONITOR_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write header");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: run `VRAM_MONITOR_BLESS=1 cargo test -p vram-monitor-capi --test header` and commit it",
        Path::new("include/vram_monitor.h").display()
    );
}

#[test]
fn header_version_macros_match_the_crate_version() {
    let header = std::fs::read_to_string(header_path()).unwrap();
    for (name, value) in [
        ("VRAM_MONITOR_VERSION_MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
        ("VRAM_MONITOR_VERSION_MINOR", env!("CARGO_PKG_VERSION_MINOR")),
        ("VRAM_MONITOR_VERSION_PATCH", env!("CARGO_PKG_VERSION_PATCH")),
    ] {
        assert!(header.contains(&format!("#define {name} {value}\n")), "{name} must be {value}");
    }
}

/// The names a C header declares at file scope: macros, enums and their variants, structs,
/// typedefs (function pointers included) and functions. Comments are skipped.
fn declared_names(header: &str) -> Vec<String> {
    let mut code = String::new();
    let mut rest = header;
    while let Some(start) = rest.find("/*") {
        code.push_str(&rest[..start]);
        rest = rest[start..].find("*/").map_or("", |end| &rest[start + end + 2..]);
    }
    code.push_str(rest);
    let identifier = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !s.is_empty();
    let mut names = Vec::new();
    for line in code.lines().map(|l| l.split("//").next().unwrap_or("")) {
        let trimmed = line.trim();
        if line.starts_with(char::is_whitespace) {
            // An enum variant: `  NAME = 1,` or `  NAME,`.
            let first = trimmed.split(|c: char| c == '=' || c == ',').next().unwrap_or("").trim();
            if identifier(first) && first.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') && trimmed != first {
                names.push(first.to_string());
            }
            continue;
        }
        if let Some(define) = trimmed.strip_prefix("#define ") {
            names.extend(define.split_whitespace().next().map(String::from));
            continue;
        }
        if trimmed.starts_with('#') || trimmed.starts_with('}') && !trimmed.starts_with("} ") || trimmed.starts_with("extern \"C\"") {
            continue;
        }
        let words: Vec<&str> = trimmed.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '(' || c == '*')).filter(|w| !w.is_empty()).collect();
        for pair in words.windows(2) {
            if pair[0] == "enum" || pair[0] == "struct" {
                names.push(pair[1].trim_matches(|c| c == '(' || c == '*').to_string());
            }
        }
        let typedef = trimmed.starts_with("typedef");
        if let Some(pointer) = trimmed.split("(*").nth(1).filter(|_| typedef) {
            // typedef R (*Name)(...);
            names.extend(pointer.split(')').next().map(String::from));
        } else if let Some(before) = trimmed.split('(').next().filter(|_| trimmed.contains('(')) {
            // A function: the word before its parameter list.
            names.extend(before.rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().map(String::from));
        } else if typedef || trimmed.starts_with("} ") {
            let last = trimmed.trim_end_matches(';').rsplit(char::is_whitespace).next().unwrap_or("");
            names.push(last.to_string());
        }
    }
    names.retain(|n| identifier(n));
    names
}

/// Names C can see without the library's prefix: Rust-only items that leaked into the header.
fn unprefixed(header: &str) -> Vec<String> {
    let mut names = declared_names(header);
    names.retain(|n| !["VRAM_MONITOR_", "VramMonitor", "vram_monitor_"].iter().any(|p| n.starts_with(p)));
    names
}

#[test]
fn every_name_the_header_declares_has_the_library_prefix() {
    let header = std::fs::read_to_string(header_path()).unwrap();
    let names = declared_names(&header);
    // The reader sees every kind of declaration: a function, a function pointer, a struct,
    // an enum and its variants, a macro.
    for seen in ["vram_monitor_new", "VramMonitorCallback", "VramMonitorHealth", "VramMonitorVerdict", "VRAM_MONITOR_VERDICT_RESIDENT", "VRAM_MONITOR_MAX_LABEL_BYTES", "VramMonitor"] {
        assert!(names.iter().any(|n| n == seen), "the check does not read {seen}: {names:?}");
    }
    assert_eq!(unprefixed(&header), Vec::<String>::new(), "names in include/vram_monitor.h without the library's prefix");
    // And it would catch the kinds of leak the core's items once made (a constant, an
    // associated constant's type, an extern block's function).
    let leaked = "/** doc */\n#define PROGRESS_QUERIES 256\ntypedef struct Pacing Pacing;\nint atexit(void (*f)(void));\n";
    assert_eq!(unprefixed(leaked), ["PROGRESS_QUERIES", "Pacing", "Pacing", "atexit"]);
}

//! Embeds every contract file and the manifest, so binaries carry the contracts they were
//! built with.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "avsc") {
            out.push(path);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let contracts = root.join("contracts");
    println!("cargo:rerun-if-changed={}", contracts.display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("manifest.toml").display()
    );
    let mut files = Vec::new();
    collect(&contracts, &mut files);
    files.sort();
    let mut code = String::from("/// Contract files: path relative to `contracts/`, and text.\npub static CONTRACT_FILES: &[(&str, &str)] = &[\n");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let relative = file
            .strip_prefix(&contracts)
            .unwrap_or(file)
            .to_string_lossy()
            .replace('\\', "/");
        let _ = writeln!(
            code,
            "    ({relative:?}, include_str!({:?})),",
            file.display().to_string()
        );
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("embedded.rs");
    std::fs::write(out, code).unwrap_or_else(|e| panic!("writing embedded contracts: {e}"));
}

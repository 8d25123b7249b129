//! The repository as the checks of its own layout read it: its root, its files, and what
//! `cargo metadata` says of the workspace's packages (declared dependencies, targets).

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The text of `relative` under the root.
pub fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The workspace's packages, as `cargo metadata --no-deps` lists them (offline: it resolves
/// nothing).
pub fn packages() -> Vec<Json> {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(repo())
        .output()
        .expect("cargo metadata");
    assert!(output.status.success(), "cargo metadata failed");
    let metadata: Json = serde_json::from_slice(&output.stdout).expect("metadata JSON");
    metadata["packages"].as_array().expect("packages").clone()
}

/// The folder holding a package's manifest.
pub fn folder(package: &Json) -> PathBuf {
    let manifest = PathBuf::from(package["manifest_path"].as_str().expect("manifest"));
    manifest.parent().expect("a folder").to_path_buf()
}

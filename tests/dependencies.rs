//! Every dependency a crate declares is one its code names: what `cargo machete` checks, done
//! here so that `make test` needs nothing installed for it. A dependency counts as used when
//! its crate name (dashes as underscores, or its `package` rename) appears as a word in a Rust
//! file of the crate's folder; dev-dependencies count for tests, benches and `#[cfg(test)]`
//! code alike.

use std::path::Path;

use workspace::{folder, packages};

#[path = "support/workspace.rs"]
mod workspace;

/// The text of every `.rs` file under `dir`, skipping nested crates' target folders.
fn sources(dir: &Path, into: &mut String) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            into.push('\n');
        }
    }
}

/// Whether `word` appears in `text` with no identifier character on either side.
fn names(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[test]
fn every_declared_dependency_is_used() {
    let mut unused = Vec::new();
    for package in packages() {
        let mut text = String::new();
        sources(&folder(&package), &mut text);
        for dependency in package["dependencies"].as_array().expect("dependencies") {
            let name = dependency["rename"]
                .as_str()
                .or_else(|| dependency["name"].as_str())
                .expect("name");
            if !names(&text, &name.replace('-', "_")) {
                unused.push(format!(
                    "{}: {name}",
                    package["name"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    assert!(
        unused.is_empty(),
        "declared and never named (remove them from Cargo.toml):\n{}",
        unused.join("\n")
    );
}

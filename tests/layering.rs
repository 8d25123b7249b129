//! The layering rule of docs/design.md, held against what the crates declare: a crate depends
//! only on crates of its own layer or below, and a component on no other component. The layers
//! are read from the table in docs/design.md and, for components and tools, from
//! components.toml; a crate in neither is an error, so a new crate must be placed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use backbone_components::Kind;
use workspace::{folder, packages, read, repo};

#[path = "support/workspace.rs"]
mod workspace;

const COMPONENTS: u32 = 3;
const TOOLS: u32 = 4;

/// Layer by crate name, from the table between `<!-- layers -->` and `<!-- /layers -->` in
/// docs/design.md: each row starts `| <n> <name> |`, then the crates (`backbone-…`) in
/// backticks.
fn layers_of_the_design() -> BTreeMap<String, u32> {
    let design = read("docs/design.md");
    let start = design
        .find("<!-- layers -->")
        .expect("a <!-- layers --> table");
    let end = design.find("<!-- /layers -->").expect("<!-- /layers -->");
    let mut layers = BTreeMap::new();
    for row in design[start..end].lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(layer) = cells[1]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
        else {
            continue; // the heading
        };
        let crates = cells[2].split('`').skip(1).step_by(2);
        for name in crates.filter(|n| n.starts_with("backbone-")) {
            assert!(
                layers.insert(name.to_owned(), layer).is_none(),
                "docs/design.md places `{name}` twice"
            );
        }
    }
    assert!(layers.len() >= 8, "the layers table lists {layers:?}");
    layers
}

/// Package name by folder, and each package's normal and build dependencies on workspace
/// crates.
fn workspace() -> (BTreeMap<PathBuf, String>, BTreeMap<String, Vec<String>>) {
    let mut folders = BTreeMap::new();
    let mut depends = BTreeMap::new();
    for package in packages() {
        let name = package["name"].as_str().expect("name").to_owned();
        folders.insert(folder(&package), name.clone());
        let on: Vec<String> = package["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            // Tests may use anything: dev-dependencies are not part of what a crate is.
            .filter(|d| d["kind"].as_str() != Some("dev") && d["path"].is_string())
            .map(|d| d["name"].as_str().expect("name").to_owned())
            .collect();
        depends.insert(name, on);
    }
    (folders, depends)
}

#[test]
fn every_crate_depends_only_on_its_layer_and_below_and_no_component_on_another() {
    let (folders, depends) = workspace();
    let mut layers = layers_of_the_design();
    for component in backbone_components::all() {
        let name = folders
            .get(&repo().join(&component.path))
            .unwrap_or_else(|| panic!("{}: no crate at {}", component.name, component.path));
        let layer = if component.kind == Kind::Tool {
            TOOLS
        } else {
            COMPONENTS
        };
        if let Some(placed) = layers.insert(name.clone(), layer) {
            assert_eq!(
                placed, layer,
                "docs/design.md and components.toml place {name}"
            );
        }
    }
    let mut wrong = Vec::new();
    for (name, on) in &depends {
        let layer = *layers.get(name).unwrap_or_else(|| {
            panic!("{name} has no layer: place it in docs/design.md or components.toml")
        });
        for dependency in on {
            let below = layers[dependency];
            if below > layer || (layer == COMPONENTS && below == COMPONENTS) {
                wrong.push(format!(
                    "{name} (layer {layer}) depends on {dependency} (layer {below})"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "against the layering:\n{}",
        wrong.join("\n")
    );
}

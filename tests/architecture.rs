//! Keeps docs/architecture.md true: the crates stay apart (the storage engine knows no Kafka, the
//! load generator imports nothing of the broker), every module of `src/` sits in one layer of
//! `LAYERS` and imports only modules of its layer or below (no import cycle at all), leaf modules
//! import nothing of the broker, and the Kafka front end never names the storage engine's types.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The broker's modules, top layer first (docs/architecture.md draws the same picture). A module
/// may import modules of its own layer or of layers below it, never above; a new module must be
/// placed here.
const LAYERS: &[(&str, &[&str])] = &[
    ("process and operations", &["server", "dev_cluster", "admin_client", "tune", "startup_log", "config_reference"]),
    ("Kafka front end", &["kafka"]),
    ("cluster metadata and replication connections", &["metadata", "replica"]),
    ("consumer groups", &["groups"]),
    ("thread-per-core runtime", &["core"]),
    ("the partition and its limits", &["partition", "topic_limits"]),
    ("compaction and the replication protocol", &["compaction", "replication"]),
    ("configuration and measurements", &["config", "metrics"]),
    ("the topic catalog", &["topics"]),
    ("leaves", &["record", "clock", "producer_state", "socket_write", "cluster", "log_limit"]),
];

/// Modules that must import nothing of the broker (only std, external crates and themselves).
const LEAVES: &[&str] = &["clock", "record", "producer_state", "socket_write", "cluster", "log_limit"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The top-level module a file of `src/` belongs to (`src/kafka/fetch.rs` → `kafka`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("non-empty").as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// The modules named by `crate::NAME` paths and `use crate::{NAME, ...}` groups in `text`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let module = module_of(&src, &file);
        if module == "main" || module == "lib" || module == "bin" {
            continue;
        }
        let text = fs::read_to_string(&file).expect("read source");
        let deps = graph.entry(module.clone()).or_default();
        for target in crate_references(&text) {
            if target != module {
                deps.insert(target);
            }
        }
    }
    graph
}

/// One cycle of `graph`, if any (depth-first search with colours).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|n| n == next).expect("on the path");
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

#[test]
fn every_module_sits_in_one_layer_and_imports_point_down() {
    let graph = module_graph();
    let mut upward = Vec::new();
    for (from, deps) in &graph {
        let from_layer = layer_of(from)
            .unwrap_or_else(|| panic!("module {from} is in no layer: add it to LAYERS and docs/architecture.md"));
        for to in deps {
            // Names that are not modules of src/ (exported macros such as `crate::warn_limited!`).
            if !graph.contains_key(to) {
                continue;
            }
            let to_layer = layer_of(to).unwrap_or_else(|| panic!("module {to} is in no layer"));
            if to_layer < from_layer {
                upward.push(format!("{from} ({}) -> {to} ({})", LAYERS[from_layer].0, LAYERS[to_layer].0));
            }
        }
    }
    assert!(upward.is_empty(), "imports pointing up the layers: {upward:#?}");
    for (name, modules) in LAYERS {
        for m in *modules {
            assert!(graph.contains_key(*m), "layer {name:?} lists {m}, which is not a module of src/");
        }
    }
}

#[test]
fn broker_modules_form_no_cycle() {
    if let Some(cycle) = find_cycle(&module_graph()) {
        panic!(
            "import cycle between broker modules: {} (see docs/architecture.md for what may import what)",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn leaf_modules_import_nothing_of_the_broker() {
    let graph = module_graph();
    for leaf in LEAVES {
        let deps = graph.get(*leaf).unwrap_or_else(|| panic!("module {leaf} not found"));
        // Names that are not modules (its own exported macros, `crate::log_limited!`) do not count.
        let modules: Vec<&String> = deps.iter().filter(|d| graph.contains_key(*d)).collect();
        assert!(modules.is_empty(), "{leaf} is a leaf but imports {modules:?}");
    }
}

#[test]
fn the_engine_knows_no_kafka_and_the_load_generator_no_broker() {
    for file in rust_files(&root().join("io/src")) {
        let text = fs::read_to_string(&file).expect("read");
        assert!(
            !text.contains("kafka_protocol") && !text.contains("sluice::"),
            "{} names Kafka or the broker",
            file.display()
        );
    }
    let io_manifest = fs::read_to_string(root().join("io/Cargo.toml")).expect("io manifest");
    assert!(!io_manifest.contains("kafka-protocol"), "io/ depends on kafka-protocol");
    let loadgen_manifest = fs::read_to_string(root().join("loadgen/Cargo.toml")).expect("loadgen manifest");
    assert!(
        !loadgen_manifest
            .lines()
            .any(|l| l.trim_start().starts_with("sluice ") || l.trim_start().starts_with("sluice=")),
        "loadgen depends on the broker crate"
    );
    for file in rust_files(&root().join("loadgen/src")) {
        let text = fs::read_to_string(&file).expect("read");
        assert!(!text.contains("sluice::"), "{} imports the broker", file.display());
    }
}

#[test]
fn the_client_crate_imports_nothing_of_the_broker() {
    let manifest = fs::read_to_string(root().join("client/Cargo.toml")).expect("client manifest");
    assert!(
        !manifest.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("sluice ") || l.starts_with("sluice=") || l.starts_with("sluice-io")
        }),
        "client/ depends on the broker crate or the engine"
    );
    for file in rust_files(&root().join("client/src")) {
        let text = fs::read_to_string(&file).expect("read");
        assert!(
            !text.contains("sluice::") && !text.contains("sluice_io"),
            "{} imports the broker or the engine",
            file.display()
        );
    }
}

#[test]
fn the_kafka_front_end_names_no_engine_type() {
    for file in rust_files(&root().join("src/kafka")) {
        let text = fs::read_to_string(&file).expect("read");
        assert!(
            !text.contains("sluice_io"),
            "{} names the storage engine (handlers see the partition's types)",
            file.display()
        );
    }
}

#[test]
fn the_reference_scan_sees_grouped_and_plain_paths() {
    let refs = crate_references("use crate::{clock, record::batch};\nlet x = crate::shard::Shard::new();");
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), vec!["clock", "record", "shard"]);
}

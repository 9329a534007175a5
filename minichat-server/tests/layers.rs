//! Holds the server's module graph to the rule in ARCHITECTURE.md: modules import downward only.
//!
//! Reads `src/` as text, collects every `crate::…` (and, inside `ws/`, `super::…`) reference of
//! each module, and checks two things: the graph has no cycle, and the ground floor (shared state,
//! responses, errors, parsing, settings) never reaches up into the router, the handlers or the
//! accept loop. A new module must be given a place in `LAYERS`, so the map stays complete.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every module, by floor: a module may import only modules on a lower floor, or on its own
/// floor when the two sit side by side without importing each other back (no cycle).
const LAYERS: &[(&str, u8)] = &[
    // Ground floor: vocabulary shared by everything above.
    ("error", 0),
    ("response", 0),
    ("diagnose", 0),
    ("fd_limit", 0),
    ("ids", 0),
    ("tcp", 0),
    ("ws::frames", 0),
    ("ws::read", 0),
    ("auth", 1),
    ("extract", 1),
    ("telemetry", 1),
    ("config", 2),
    ("limits", 3),
    ("cors", 3),
    ("state", 4),
    // Handlers: each turns requests into responses over the shared state.
    ("api", 5),
    ("conversations", 5),
    ("app", 5),
    ("ws::connection", 5),
    ("ws::handshake", 6),
    ("ws", 7),
    ("docs", 6),
    ("openapi", 7),
    // The router, then the accept loop, then the crate's roots.
    ("routes", 8),
    ("server", 9),
    ("lib", 10),
    ("main", 10),
];

/// The floors below which nothing may import the router, handlers or accept loop.
const GROUND_FLOOR_TOP: u8 = 4;

fn module_name(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules a file's code refers to (its own test module included: tests may not reach up
/// either).
fn references(module: &str, text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let parent = module.rsplit_once("::").map(|(p, _)| p.to_string());
    let mut add = |path: &str| {
        // The longest known module that `path` starts with (`ws::frames::X` → `ws::frames`).
        let segments: Vec<&str> = path.split("::").collect();
        for n in (1..=segments.len()).rev() {
            let candidate = segments[..n].join("::");
            if known.contains(&candidate) && candidate != module {
                found.insert(candidate);
                return;
            }
        }
    };
    for (prefix, base) in [
        ("crate::", String::new()),
        ("super::", parent.clone().unwrap_or_default()),
    ] {
        if prefix == "super::" && parent.is_none() {
            continue;
        }
        // Inside a file's `#[cfg(test)] mod tests`, `super::` is the file itself, not its parent.
        let mut rest = if prefix == "super::" {
            text.split("#[cfg(test)]").next().unwrap_or(text)
        } else {
            text
        };
        while let Some(at) = rest.find(prefix) {
            rest = &rest[at + prefix.len()..];
            let join = |p: &str| {
                if base.is_empty() {
                    p.to_string()
                } else {
                    format!("{base}::{p}")
                }
            };
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let item = item.trim();
                    if !item.is_empty() && item != "self" && item != "*" {
                        add(&join(item));
                    }
                }
            } else {
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                let path = rest[..end].trim_end_matches(':');
                if path != "*" && !path.is_empty() {
                    add(&join(path));
                }
            }
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            (
                module_name(&src, f),
                std::fs::read_to_string(f).expect("read source"),
            )
        })
        .collect();
    let known: BTreeSet<String> = modules.iter().map(|(m, _)| m.clone()).collect();
    modules
        .iter()
        .map(|(m, text)| (m.clone(), references(m, text, &known)))
        .collect()
}

fn floor(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| {
            panic!("module `{module}` has no floor in tests/layers.rs LAYERS: give it one")
        })
}

#[test]
fn every_module_has_a_floor_and_imports_downward_only() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        let own = floor(module);
        for dep in deps {
            if floor(dep) > own {
                wrong.push(format!(
                    "{module} (floor {own}) imports {dep} (floor {})",
                    floor(dep)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports pointing up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_ground_floor_never_reaches_the_router_or_handlers() {
    let graph = graph();
    for (module, deps) in &graph {
        if floor(module) <= GROUND_FLOOR_TOP {
            for dep in deps {
                assert!(
                    floor(dep) <= GROUND_FLOOR_TOP,
                    "{module} is on the ground floor but imports {dep}"
                );
            }
        }
    }
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    // Depth-first search with colours: grey = on the current path.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) {
        match state.get(node) {
            Some(true) => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                panic!("import cycle: {} -> {node}", path[start..].join(" -> "));
            }
            Some(false) => return,
            None => {}
        }
        state.insert(node, true);
        path.push(node);
        for dep in graph.get(node).into_iter().flatten() {
            visit(dep, graph, state, path);
        }
        path.pop();
        state.insert(node, false);
    }
    let mut state = BTreeMap::new();
    for module in graph.keys() {
        visit(module, &graph, &mut state, &mut Vec::new());
    }
}

#[test]
fn the_reader_sees_imports() {
    // The checks above are only as good as the parser: it must see both import forms.
    let known: BTreeSet<String> = ["a", "b", "c", "ws", "ws::frames"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let refs = references(
        "ws::connection",
        "use crate::{a, b::X};\nuse super::frames::{Y};\nfn f() { crate::c::g() }",
        &known,
    );
    let expected: BTreeSet<String> = ["a", "b", "c", "ws::frames"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(refs, expected);
}

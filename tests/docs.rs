//! The documentation stays true: `docs/API.md` documents exactly the operations of the OpenAPI
//! document a running server serves, and every relative link of the repository's Markdown
//! points at a file of the repository (none reaches outside it, so a fresh clone has no broken
//! link).

mod support;

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use support::{Backend, Backends, TestServer};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every file under the repository with one of `extensions`, outside `target/` and hidden
/// directories.
fn files(extensions: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![repo()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if extensions
                .iter()
                .any(|ext| path.extension().and_then(|e| e.to_str()) == Some(ext))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The operations `docs/API.md` documents: its headings of the form ``### `METHOD /path` ``.
fn documented_operations() -> BTreeSet<String> {
    read(&repo().join("docs/API.md"))
        .lines()
        .filter_map(|line| line.strip_prefix("### `")?.strip_suffix('`'))
        .filter(|op| {
            op.split_once(' ').is_some_and(|(method, path)| {
                method.chars().all(|c| c.is_ascii_uppercase()) && path.starts_with('/')
            })
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_md_documents_every_operation_of_the_openapi_document() {
    let backends = Backends::new(Backend::Memory).await;
    let server = TestServer::open(&backends).await;
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    let paths = doc["paths"].as_object().expect("OpenAPI paths");
    let served: BTreeSet<String> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    assert!(served.len() >= 10, "too few operations: {served:?}");
    let documented = documented_operations();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "operations of /openapi.json with no ### `METHOD /path` section in docs/API.md: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "sections of docs/API.md that /openapi.json does not have: {unserved:?}"
    );
}

/// The targets of the inline links `[text](target)` in `markdown`.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = markdown;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].trim();
        // `[a](b "title")`: the target is the first word.
        let target = target.split_whitespace().next().unwrap_or("");
        targets.push(target.trim_matches(['<', '>']).to_owned());
        rest = &rest[end..];
    }
    targets
}

/// `path` with `.` and `..` resolved lexically; `None` when it climbs above its root.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            other => out.push(other),
        }
    }
    Some(out)
}

#[test]
fn every_relative_link_of_the_markdown_points_into_the_repository() {
    let root = repo();
    let mut broken = Vec::new();
    let markdown = files(&["md"]);
    assert!(markdown.iter().any(|f| f.ends_with("README.md")));
    for file in &markdown {
        let dir = file
            .parent()
            .expect("a file has a directory")
            .strip_prefix(&root)
            .expect("under the repository");
        for target in link_targets(&read(file)) {
            if target.is_empty()
                || target.starts_with('#')
                || target.contains("://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let path = target.split('#').next().unwrap_or("");
            let inside = normalise(&dir.join(path));
            match inside {
                Some(relative) if root.join(&relative).exists() => {}
                _ => broken.push(format!(
                    "{}: {target}",
                    file.strip_prefix(&root).unwrap_or(file).display()
                )),
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to files that are not in the repository: {broken:#?}"
    );
}

#[test]
fn no_doc_points_outside_the_repository_to_the_old_contract() {
    let root = repo();
    let mut found = Vec::new();
    for file in files(&["md", "rs", "toml"]) {
        for (n, line) in read(&file).lines().enumerate() {
            if line.contains("../shared/") || line.contains("shared/API.md") {
                found.push(format!(
                    "{}:{}: {line}",
                    file.strip_prefix(&root).unwrap_or(&file).display(),
                    n + 1
                ));
            }
        }
    }
    // This file names the strings it looks for; it is no reference to them.
    found.retain(|hit| !hit.starts_with("tests/docs.rs"));
    assert!(
        found.is_empty(),
        "references to files outside the repository (use docs/API.md): {found:#?}"
    );
}

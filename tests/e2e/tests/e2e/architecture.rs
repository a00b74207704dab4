//! The shape of the code, checked: no module of a crate imports one that imports it back
//! (directly or round a longer loop). A module is a file or directory under a crate's `src`;
//! it depends on another when its code (not its comments, not its tests) names
//! `crate::<other>` or, from a top-level file, `super::<other>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn crates() -> Vec<PathBuf> {
    let root = workspace();
    let mut out = vec![root.join("tests/e2e")];
    for group in ["services", "libs", "tools"] {
        for entry in std::fs::read_dir(root.join(group)).unwrap() {
            let path = entry.unwrap().path();
            if path.join("src").is_dir() {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A file's code: comments and everything from its first `#[cfg(test)]` dropped.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Whether `text` names `prefix` followed by `module` as a whole word.
fn names(text: &str, prefix: &str, module: &str) -> bool {
    let needle = format!("{prefix}{module}");
    text.match_indices(&needle).any(|(i, _)| {
        let after = text[i + needle.len()..].chars().next();
        !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// Each top-level module of the crate and the modules it depends on.
fn module_graph(krate: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let src = krate.join("src");
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let text = if path.is_dir() {
            rust_files(&path)
                .iter()
                .map(|f| code(f))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            code(&path)
        };
        modules.entry(name).or_default().push_str(&text);
    }
    let names_of: Vec<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, text)| {
            let deps = names_of
                .iter()
                .filter(|other| *other != name)
                .filter(|other| {
                    names(text, "crate::", other)
                        || names(text, "super::", other)
                        || names_in_braces(text, other)
                })
                .cloned()
                .collect();
            (name.clone(), deps)
        })
        .collect()
}

/// `use crate::{a, b::c}` names `a` and `b`.
fn names_in_braces(text: &str, module: &str) -> bool {
    text.match_indices("crate::{").any(|(i, _)| {
        let inner = &text[i + "crate::{".len()..];
        let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
        inner
            .split(',')
            .any(|item| item.trim().split("::").next() == Some(module))
    })
}

/// The modules on a loop, if any: a module that can reach itself.
fn loops(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for start in graph.keys() {
        // Depth-first from `start`, looking for a way back to it.
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for next in &graph[&at] {
                if next == start {
                    let mut cycle = path.clone();
                    cycle.push(start.clone());
                    found.push(cycle);
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    found
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mut problems = Vec::new();
    for krate in crates() {
        for cycle in loops(&module_graph(&krate)) {
            problems.push(format!(
                "{}: {}",
                krate.strip_prefix(workspace()).unwrap_or(&krate).display(),
                cycle.join(" -> ")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "module loops:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_loop_finder_finds_a_loop() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    let found = loops(&graph);
    assert!(found.contains(&vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert!(!found.iter().any(|c| c.contains(&"d".to_owned())));
    assert!(names("use crate::store::{self};", "crate::", "store"));
    assert!(!names("use crate::stores;", "crate::", "store"));
    assert!(names_in_braces("use crate::{api, store::Row};", "store"));
}

/// `infra/services.tsv` is the one list of services and ports the scripts read; the Rust
/// constants and the Prometheus configuration say the same.
#[test]
fn the_service_list_is_one_list() {
    let listed: Vec<(String, u16)> =
        std::fs::read_to_string(workspace().join("infra/services.tsv"))
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (name, port) = l.split_once('\t').expect("service<TAB>port");
                (name.to_owned(), port.parse().expect("a port"))
            })
            .collect();
    let in_rust: Vec<(String, u16)> = [
        (sagapay_gateway::SERVICE, sagapay_gateway::DEFAULT_PORT),
        (
            sagapay_orchestrator::SERVICE,
            sagapay_orchestrator::DEFAULT_PORT,
        ),
        (sagapay_risk::SERVICE, sagapay_risk::DEFAULT_PORT),
        (
            sagapay_provider_adapter::SERVICE,
            sagapay_provider_adapter::DEFAULT_PORT,
        ),
        (sagapay_ledger::SERVICE, sagapay_ledger::DEFAULT_PORT),
        (
            sagapay_notification::SERVICE,
            sagapay_notification::DEFAULT_PORT,
        ),
        (sagapay_console::SERVICE, sagapay_console::DEFAULT_PORT),
    ]
    .into_iter()
    .map(|(s, p)| (s.to_owned(), p))
    .collect();
    assert_eq!(listed, in_rust);
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..6], sagapay_service_kit::SERVICES);
    assert_eq!(names[6..], [sagapay_service_kit::CONSOLE]);
    let prometheus =
        std::fs::read_to_string(workspace().join("infra/prometheus/prometheus.yml")).unwrap();
    for (name, port) in &listed {
        assert!(
            prometheus.contains(&format!("- {name}:{port}")),
            "prometheus.yml does not scrape {name}:{port}"
        );
    }
}

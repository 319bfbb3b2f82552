//! The layers point one way. A `crate::X` reference from top-level module A to X is
//! an edge A → X (test modules excluded); every edge must go to a lower layer, so
//! there are no cycles between top-level modules. A new top-level module must be
//! placed in a layer here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first. Modules of one layer may not reference each other.
const LAYERS: &[&[&str]] = &[
    &[
        "fsutil",
        "rng",
        "printable",
        "output",
        "logging",
        "eval",
    ],
    &["progress"],
    &["data", "weights"],
    &["model"],
    &["config"],
    &["run"],
    &["train", "index"],
    &["theme"],
    &["tui"],
    &["cli"],
    &["commands"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Text of a source file without its `#[cfg(test)] mod tests { … }` tail.
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests")
        .map_or(text, |at| &text[..at])
}

fn references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("ls").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn top_level_modules_only_reference_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut modules = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("component");
        let name = first.as_os_str().to_string_lossy();
        let module = name.trim_end_matches(".rs").to_string();
        if module == "main" || module == "lib" {
            continue;
        }
        modules.insert(module.clone());
        let text = std::fs::read_to_string(f).expect("read");
        let refs = references(without_tests(&text));
        edges.entry(module).or_default().extend(refs);
    }
    let mut wrong = Vec::new();
    for m in &modules {
        let Some(from) = layer_of(m) else {
            wrong.push(format!("{m} is in no layer of tests/architecture.rs"));
            continue;
        };
        for target in edges.get(m).into_iter().flatten() {
            if target == m || !modules.contains(target) {
                continue;
            }
            match layer_of(target) {
                Some(to) if to < from => {}
                _ => wrong.push(format!("{m} → {target} points up or sideways")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_a_reference_and_skips_tests() {
    let text = "use crate::data::x;\nfn f() { crate::tui::y(); }\n#[cfg(test)]\nmod tests { use crate::commands; }";
    let refs = references(without_tests(text));
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        vec!["data".to_string(), "tui".to_string()]
    );
}

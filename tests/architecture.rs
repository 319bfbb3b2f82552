//! The layers point one way. A `crate::X` reference from top-level module A to X is
//! an edge A → X (test modules excluded); every edge must go to a lower layer, so
//! there are no cycles between top-level modules. A new top-level module must be
//! placed in a layer here.
//!
//! Inside a module, its files point one way too: two sibling files (`a/x.rs` and
//! `a/y.rs`) must not import each other, directly or around a circle of siblings
//! (what `shared/tools/file_cycles.py src` reports).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first. Modules of one layer may not reference each other.
const LAYERS: &[&[&str]] = &[
    &["pid"],
    &["fsutil", "rng", "printable", "output", "logging", "eval"],
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
    let mut wrong: Vec<String> = LAYERS
        .iter()
        .flat_map(|l| l.iter())
        .filter(|m| !modules.contains(**m))
        .map(|m| format!("{m} is in a layer of tests/architecture.rs but no module of src/"))
        .collect();
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

/// A file's module path under `src/`: `tui/tabs/train.rs` → `[tui, tabs, train]`,
/// `model/ops.rs` → `[model, ops]`, a `mod.rs` names its folder; `lib.rs` and
/// `main.rs` are the root, `[]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut path: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if path.last().is_some_and(|l| l == "mod") {
        path.pop();
    }
    if path == ["lib"] || path == ["main"] {
        path.clear();
    }
    path
}

/// `text` without line comments (doc comments included): a path in prose is no
/// import.
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |at| &l[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every path in `text` that starts at `crate::`, `super::` or `self::` and names at
/// least one segment, resolved to an absolute module path from the file `here`
/// (`super::super::x` goes up twice).
fn module_references(text: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (i, &(at, _)) in chars.iter().enumerate() {
        if i > 0 && is_word(chars[i - 1].1) {
            continue;
        }
        let rest = &text[at..];
        let Some(kind) = ["crate", "super", "self"]
            .into_iter()
            .find(|k| rest.starts_with(k))
        else {
            continue;
        };
        // The segments after the keyword: `::name` repeated.
        let mut parts = Vec::new();
        let mut tail = &rest[kind.len()..];
        while let Some(after) = tail.strip_prefix("::") {
            let name: String = after.chars().take_while(|&c| is_word(c)).collect();
            if name.is_empty() {
                break;
            }
            tail = &after[name.len()..];
            parts.push(name);
        }
        if parts.is_empty() {
            continue;
        }
        let mut base: Vec<String> = match kind {
            "crate" => Vec::new(),
            "self" => here.to_vec(),
            _ => here[..here.len().saturating_sub(1)].to_vec(),
        };
        if kind == "super" {
            while parts.first().is_some_and(|p| p == "super") {
                base.pop();
                parts.remove(0);
            }
        }
        base.extend(parts);
        out.push(base);
    }
    out
}

/// Circles of sibling files: `edges` maps a file's module path to the module paths
/// of the files it references; only edges between files of one parent count. Each
/// circle is listed once, its members sorted.
fn sibling_circles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    let siblings = |a: &Vec<String>, b: &Vec<String>| {
        !a.is_empty() && a.len() == b.len() && a[..a.len() - 1] == b[..b.len() - 1]
    };
    // Which siblings each file reaches through siblings.
    let reach = |from: &Vec<String>| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(m) = stack.pop() {
            for t in edges.get(&m).into_iter().flatten() {
                if siblings(&m, t) && seen.insert(t.clone()) {
                    stack.push(t.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&Vec<String>, BTreeSet<Vec<String>>> =
        edges.keys().map(|m| (m, reach(m))).collect();
    let mut circles = BTreeSet::new();
    for (m, r) in &reaches {
        if !r.contains(*m) {
            continue;
        }
        let circle: Vec<Vec<String>> = r
            .iter()
            .filter(|t| reaches.get(t).is_some_and(|back| back.contains(*m)))
            .cloned()
            .collect();
        circles.insert(circle);
    }
    circles.into_iter().collect()
}

#[test]
fn sibling_files_do_not_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let texts: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            (module_path(&src, f), without_comments(without_tests(&text)))
        })
        .collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (here, text) in &texts {
        let targets = edges.entry(here.clone()).or_default();
        for full in module_references(text, here) {
            // The file that holds the item: the longest prefix that is a file.
            if let Some(file) = (1..=full.len())
                .rev()
                .map(|n| full[..n].to_vec())
                .find(|p| texts.contains_key(p))
                && file != *here
            {
                targets.insert(file);
            }
        }
    }
    let circles: Vec<String> = sibling_circles(&edges)
        .iter()
        .map(|c| {
            let names: Vec<String> = c.iter().map(|m| format!("{}.rs", m.join("/"))).collect();
            format!("circle: {}", names.join(" <-> "))
        })
        .collect();
    assert!(circles.is_empty(), "{}", circles.join("\n"));
}

#[test]
fn the_circle_checker_sees_siblings_that_import_each_other() {
    let here = |p: &str| p.split('/').map(String::from).collect::<Vec<_>>();
    let refs = module_references(
        "use super::y::Thing;\nfn f() { crate::a::z::g(); self::inner::h(); }\nuse super::{grouped};\nlet myself::x = 1;",
        &here("a/x"),
    );
    assert_eq!(
        refs,
        vec![here("a/y/Thing"), here("a/z/g"), here("a/x/inner/h")]
    );
    let edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = [
        ("a/x", vec!["a/y"]),
        ("a/y", vec!["a/z", "b"]),
        ("a/z", vec!["a/x"]),
        ("a/w", vec!["a/x"]),
        ("b", vec!["a/x"]),
    ]
    .into_iter()
    .map(|(m, ts)| (here(m), ts.into_iter().map(here).collect()))
    .collect();
    assert_eq!(
        sibling_circles(&edges),
        vec![vec![here("a/x"), here("a/y"), here("a/z")]]
    );
    assert_eq!(
        without_comments("use a; // use super::x\n/// super::y"),
        "use a; \n"
    );
}

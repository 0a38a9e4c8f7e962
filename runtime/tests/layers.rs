//! The runtime's subsystems import one way, and no file holds more than one
//! idea.
//!
//! The order of the `mod` declarations in `src/lib.rs` is the layering,
//! from the bottom up: code in a subsystem may name (`crate::x`, or an item
//! the crate root re-exports from `x`) only subsystems declared before it.
//! So there is no cycle between subsystems, and the list in `lib.rs` says
//! what may change without touching what. Inside a subsystem (and inside
//! any folder below it) the modules import each other without a cycle
//! either: data below what acts on it. Unit tests (`mod tests` blocks and
//! `tests.rs` files) may reach anywhere.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The most lines one source file of the runtime may have.
const MAX_LINES: usize = 700;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The subsystems, bottom up, as `lib.rs` declares them.
fn layers(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("mod "))
        .filter_map(|l| l.strip_suffix(';'))
        .map(str::to_owned)
        .collect()
}

/// What the crate root re-exports: item name -> subsystem.
fn reexports(lib: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for line in lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub use "))
    {
        let line = line.trim_end_matches(';');
        let subsystem = line.split("::").next().unwrap_or_default().to_owned();
        let names = match (line.find('{'), line.rfind('}')) {
            (Some(a), Some(b)) => line[a + 1..b].to_owned(),
            _ => line.rsplit("::").next().unwrap_or_default().to_owned(),
        };
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            map.insert(name.to_owned(), subsystem.clone());
        }
    }
    map
}

/// The code of a file without its comments and its unit tests.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every top-level name `code` reaches through `crate::`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let first = item.trim().split("::").next().unwrap_or_default();
                names.push(first.trim().to_owned());
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..end].to_owned());
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

#[test]
fn subsystems_import_only_the_ones_below_them() {
    let root = src();
    let lib = fs::read_to_string(root.join("lib.rs")).expect("lib.rs");
    let order = layers(&lib);
    let rank: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let exported = reexports(&lib);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).expect("under src");
        let first = rel.components().next().expect("a component");
        let first = first.as_os_str().to_string_lossy();
        let subsystem = first.trim_end_matches(".rs");
        if subsystem == "lib" || rel.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let Some(&own) = rank.get(subsystem) else {
            wrong.push(format!(
                "{}: subsystem {subsystem:?} is not declared in lib.rs",
                rel.display()
            ));
            continue;
        };
        let text = fs::read_to_string(file).expect("read");
        for name in crate_paths(&code(&text)) {
            let target = match rank.get(name.as_str()) {
                Some(_) => name.clone(),
                None => match exported.get(&name) {
                    Some(m) => m.clone(),
                    None => continue,
                },
            };
            if target != subsystem && rank[target.as_str()] > own {
                wrong.push(format!(
                    "{}: `{subsystem}` uses crate::{name} from `{target}`, which lib.rs declares \
                     after it",
                    rel.display()
                ));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports against the layering of lib.rs ({}):\n{}",
        order.join(" < "),
        wrong.join("\n")
    );
}

/// The module path of a source file under `src`: `supervisor/master.rs`
/// and `store/memory/mod.rs` are `["supervisor", "master"]` and
/// `["store", "memory"]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        if last != "mod.rs" && last != "lib.rs" {
            parts.push(last.trim_end_matches(".rs").to_owned());
        }
    }
    parts
}

/// Every module path `code`, written in module `here`, names through
/// `crate::`, `super::` (any number) or `self::`, braces expanded one
/// level; the path runs as far as its lowercase segments go.
fn module_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let boundary = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        let start = ["crate::", "super::", "self::"]
            .iter()
            .find(|p| boundary && rest.starts_with(**p));
        let Some(start) = start else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let mut base: Vec<String> = match *start {
            "crate::" => Vec::new(),
            "self::" => here.to_vec(),
            _ => here[..here.len().saturating_sub(1)].to_vec(),
        };
        let mut tail = &rest[start.len()..];
        while let Some(more) = tail.strip_prefix("super::") {
            base.pop();
            tail = more;
        }
        expand(base, tail, &mut found);
        i += start.len();
    }
    found
}

/// The module paths of `tail` (what follows `crate::`, `super::` or
/// `self::`) from `base`, a `{...}` group expanded at any depth (not
/// nested groups inside it): `a::{b, c::D}` gives `a::b` and `a::c`.
fn expand(mut path: Vec<String>, tail: &str, found: &mut Vec<Vec<String>>) {
    let mut rest = tail;
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                expand(path.clone(), item.trim(), found);
            }
            return;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            break;
        }
        path.push(name.clone());
        match rest[name.len()..].strip_prefix("::") {
            Some(more) => rest = more,
            None => break,
        }
    }
    if !path.is_empty() {
        found.push(path);
    }
}

/// The cycles among the children of each module: an edge `a -> b` between
/// two children of folder `C` when code in `C::a` (or below it) names
/// `C::b` (or below it).
fn module_cycles(edges: &HashMap<Vec<String>, HashSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    // Tarjan's strongly connected components.
    struct Walk<'a> {
        edges: &'a HashMap<Vec<String>, HashSet<Vec<String>>>,
        index: HashMap<&'a [String], usize>,
        low: HashMap<&'a [String], usize>,
        stack: Vec<&'a [String]>,
        on: HashSet<&'a [String]>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a [String]) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        w.on.insert(v);
        let next: Vec<&'a [String]> = w
            .edges
            .get(v)
            .map(|s| s.iter().map(Vec::as_slice).collect())
            .unwrap_or_default();
        for t in next {
            if !w.index.contains_key(t) {
                visit(w, t);
                let low = w.low[v].min(w.low[t]);
                w.low.insert(v, low);
            } else if w.on.contains(t) {
                let low = w.low[v].min(w.index[t]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = Vec::new();
            while let Some(t) = w.stack.pop() {
                w.on.remove(t);
                component.push(t.to_vec());
                if t == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                w.out.push(component);
            }
        }
    }
    let mut w = Walk {
        edges,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on: HashSet::new(),
        out: Vec::new(),
    };
    let mut nodes: Vec<&Vec<String>> = edges.keys().collect();
    nodes.sort();
    for v in nodes {
        if !w.index.contains_key(v.as_slice()) {
            visit(&mut w, v);
        }
    }
    w.out.sort();
    w.out
}

/// The edges between sibling modules that the files under `root` make.
fn sibling_edges(root: &Path) -> HashMap<Vec<String>, HashSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let modules: HashSet<Vec<String>> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(root).expect("under src")))
        .collect();
    let mut edges: HashMap<Vec<String>, HashSet<Vec<String>>> = HashMap::new();
    for file in &files {
        let rel = file.strip_prefix(root).expect("under src");
        if rel.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let here = module_of(rel);
        let text = fs::read_to_string(file).expect("read");
        for target in module_paths(&code(&text), &here) {
            let common = here.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common >= here.len() || common >= target.len() {
                continue;
            }
            let from = here[..=common].to_vec();
            let to = target[..=common].to_vec();
            if modules.iter().any(|m| m.starts_with(&to)) {
                edges.entry(from).or_default().insert(to.clone());
                edges.entry(to).or_default();
            }
        }
    }
    edges
}

#[test]
fn no_module_cycles_inside_a_subsystem() {
    let cycles = module_cycles(&sibling_edges(&src()));
    let shown: Vec<String> = cycles
        .iter()
        .map(|c| {
            c.iter()
                .map(|m| m.join("::"))
                .collect::<Vec<_>>()
                .join(" <-> ")
        })
        .collect();
    assert!(
        shown.is_empty(),
        "modules that import each other (put the data they share below both):\n{}",
        shown.join("\n")
    );
}

#[test]
fn the_cycle_checker_sees_super_self_and_groups() {
    let here = ["a".to_owned(), "b".to_owned()];
    let paths = module_paths(
        "use super::c::D;\nuse super::{d, e::F};\nlet _ = super::super::x::y;\nuse self::z;\nuse crate::q::{r, S};",
        &here,
    );
    let shown: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        shown,
        ["a::c", "a::d", "a::e", "x::y", "a::b::z", "q::r", "q"]
    );
    let module = |m: &str| m.split("::").map(str::to_owned).collect::<Vec<_>>();
    let mut edges: HashMap<Vec<String>, HashSet<Vec<String>>> = HashMap::new();
    for (from, to) in [
        ("s::a", "s::b"),
        ("s::b", "s::c"),
        ("s::c", "s::a"),
        ("s::d", "s::a"),
    ] {
        edges.entry(module(from)).or_default().insert(module(to));
        edges.entry(module(to)).or_default();
    }
    let cycles = module_cycles(&edges);
    assert_eq!(
        cycles,
        [vec![module("s::a"), module("s::b"), module("s::c")]]
    );
}

#[test]
fn no_source_file_is_over_700_lines() {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = fs::read_to_string(f).expect("read").lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    long.sort();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines, so more than one idea each:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checker_sees_paths_groups_and_reexports() {
    let lib = "mod a;\nmod b;\npub use b::thing::{Thing, Other};\npub use a::x::Y;\n";
    assert_eq!(layers(lib), ["a", "b"]);
    let map = reexports(lib);
    assert_eq!(map["Thing"], "b");
    assert_eq!(map["Other"], "b");
    assert_eq!(map["Y"], "a");
    let paths = crate_paths("use crate::a::x;\nuse crate::{b::c, Thing};\nlet _ = crate::Y;");
    assert_eq!(paths, ["a", "b", "Thing", "Y"]);
    let stripped = code("use crate::a; // crate::b\n#[cfg(test)]\nmod tests {\n use crate::b;\n}");
    assert_eq!(crate_paths(&stripped), ["a"]);
}

//! The runtime's subsystems import one way, and no file holds more than one
//! idea.
//!
//! The order of the `mod` declarations in `src/lib.rs` is the layering,
//! from the bottom up: code in a subsystem may name (`crate::x`, or an item
//! the crate root re-exports from `x`) only subsystems declared before it.
//! So there is no cycle between subsystems, and the list in `lib.rs` says
//! what may change without touching what. Unit tests (`mod tests` blocks
//! and `tests.rs` files) may reach anywhere.

use std::collections::HashMap;
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

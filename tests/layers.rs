//! The layering the crate docs promise, checked on the source: every path a module's code
//! names inside the crate (`crate::engine::…`, `crate::lab::…`) points to its own layer or
//! one below it. From the bottom: `error` and `units`, `workload`, `engine`, `lab` (and,
//! beside it, `mpi`, the MPI backend of the `mpi` feature), `report`. Only `lib.rs` (the root's re-exports) may name everything; code below it names
//! its imports by layer, never through the root (`crate::Pool`), so that the check sees
//! them. Comments are not code: a doc link may point anywhere.

use std::path::{Path, PathBuf};

/// The layers, bottom first; a module may use its own rank and below.
const LAYERS: [(&str, usize); 7] = [
    ("error", 0),
    ("units", 0),
    ("workload", 1),
    ("engine", 2),
    ("lab", 3),
    ("mpi", 3),
    ("report", 4),
];

fn rank(layer: &str) -> Option<usize> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == layer)
        .map(|&(_, r)| r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer a source file belongs to: its first component under `src/`, without `.rs`.
fn layer_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let first = relative.components().next().expect("a path component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

/// The code of a line: what precedes a `//` comment (string contents are not parsed; a
/// `crate::` inside a string literal would be reported, and reworded).
fn code_of(line: &str) -> &str {
    line.find("//").map_or(line, |at| &line[..at])
}

/// Every `crate::<name>` the code names: the name right after `crate::`.
fn crate_paths(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .filter(|&(at, _)| {
            // `crate::` itself, not the tail of another path (`procpool_crate::`).
            at == 0
                || !code.as_bytes()[at - 1].is_ascii_alphanumeric()
                    && code.as_bytes()[at - 1] != b'_'
        })
        .map(|(at, _)| {
            code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_module_uses_only_its_own_layer_and_those_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &files {
        let layer = layer_of(&src, file);
        if layer == "lib" {
            continue;
        }
        let own = rank(&layer).unwrap_or_else(|| {
            panic!(
                "{} is in no layer: add its folder to LAYERS",
                file.display()
            )
        });
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (number, line) in text.lines().enumerate() {
            for target in crate_paths(code_of(line)) {
                checked += 1;
                match rank(&target) {
                    Some(r) if r <= own => {}
                    Some(_) => wrong.push(format!(
                        "{}:{}: {layer} uses crate::{target}, a layer above it",
                        file.display(),
                        number + 1
                    )),
                    None => wrong.push(format!(
                        "{}:{}: crate::{target} goes through the crate root; name its layer",
                        file.display(),
                        number + 1
                    )),
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} paths seen: is the scan reading the code?"
    );
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scan_sees_what_it_checks() {
    assert_eq!(
        crate_paths("use crate::engine::pool::Pool; let x = crate::lab::run();"),
        ["engine", "lab"]
    );
    assert_eq!(
        code_of("let a = 1; // crate::report is fine here"),
        "let a = 1; "
    );
    assert!(crate_paths("my_crate::engine").is_empty());
    assert_eq!(rank("report"), Some(4));
    assert_eq!(rank("lib"), None);
}

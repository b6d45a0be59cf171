//! The layering the crate docs promise, checked on the source: every path a module's code
//! names inside the crate (`crate::engine::…`, `crate::lab::…`) points to its own layer or
//! one below it. From the bottom: `error` and `units`, `workload`, `engine`, `lab` (and,
//! beside it, `mpi`, the MPI backend of the `mpi` feature), `report`. Only `lib.rs` (the root's re-exports) may name everything; code below it names
//! its imports by layer, never through the root (`crate::Pool`), so that the check sees
//! them. Comments are not code: a doc link may point anywhere.

use std::path::{Path, PathBuf};

/// Layers a layer may not use although they are below it: (user, used).
const NEVER: [(&str, &str); 1] = [("report", "engine")];

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

/// The folder `name` of the crate (`src`, `bin`) and its Rust files, sorted.
fn sources(name: &str) -> (PathBuf, Vec<PathBuf>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    files.sort();
    (dir, files)
}

/// Fails naming every `wrong` line, or when fewer than `least` places were `checked` (the
/// scan would not be reading the code).
fn assert_none_wrong(wrong: &[String], checked: usize, least: usize, what: &str) {
    assert!(
        checked > least,
        "only {checked} {what} seen: is the scan reading the code?"
    );
    assert!(
        wrong.is_empty(),
        "{what} against the layering:\n{}",
        wrong.join("\n")
    );
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
    let (src, files) = sources("src");
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
                    Some(_) if NEVER.contains(&(layer.as_str(), target.as_str())) => {
                        wrong.push(format!(
                            "{}:{}: {layer} uses crate::{target}, which it must not name \
                             (re-export what it needs through the layer it reads)",
                            file.display(),
                            number + 1
                        ))
                    }
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
    assert_none_wrong(&wrong, checked, 100, "crate:: paths");
}

/// The module path of a source file under `src/`: `lab/run.rs` is `["lab", "run"]`,
/// `lab/advice/mod.rs` is `["lab", "advice"]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let mut path: Vec<String> = relative
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    if path.last().is_some_and(|last| last == "mod") {
        path.pop();
    }
    path
}

/// Counts of the `super` in each `super::` path of `code`: `super::super::x` is 2.
fn super_climbs(code: &str) -> Vec<usize> {
    let mut climbs = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("super::") {
        let before = rest[..at].chars().next_back();
        let mut count = 0;
        let mut tail = &rest[at..];
        while let Some(next) = tail.strip_prefix("super::") {
            count += 1;
            tail = next;
        }
        // `super::` itself, not the tail of another name (`my_super::`).
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            climbs.push(count);
        }
        rest = tail;
    }
    climbs
}

/// Whether `line` opens an inline module (`mod tests {`), whose `super` is the file's module.
fn opens_inline_module(code: &str) -> bool {
    let words: Vec<&str> = code.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == "mod")
        .is_some_and(|at| words.get(at + 2) == Some(&"{"))
}

#[test]
fn a_super_path_stays_inside_its_layer() {
    let (src, files) = sources("src");
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &files {
        let module = module_path(&src, file);
        if module == ["lib"] {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read a source file");
        // Inline modules open here, by the brace depth they opened at.
        let mut inline: Vec<usize> = Vec::new();
        let mut depth = 0usize;
        for (number, line) in text.lines().enumerate() {
            let code = code_of(line);
            if opens_inline_module(code) {
                inline.push(depth);
            }
            for climb in super_climbs(code) {
                checked += 1;
                // Out of the inline modules first, then up the file's own module path; at
                // least the layer's folder must remain.
                let from_file = climb.saturating_sub(inline.len());
                if from_file >= module.len() {
                    wrong.push(format!(
                        "{}:{}: a super:: path climbs out of the {} layer: name it with crate::",
                        file.display(),
                        number + 1,
                        module[0]
                    ));
                }
            }
            for c in code.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth = depth.saturating_sub(1);
                        if inline.last() == Some(&depth) {
                            inline.pop();
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    assert_none_wrong(&wrong, checked, 20, "super:: paths");
}

/// What the command may not do itself, and why.
const NOT_IN_THE_COMMAND: [(&str, &str); 5] = [
    (
        "unsafe",
        "unsafe code belongs in the library's few unsafe modules",
    ),
    ("nix::", "system calls belong in the library"),
    ("libc::", "system calls belong in the library"),
    ("pre_exec", "starting processes belongs in the library"),
    ("CommandExt", "starting processes belongs in the library"),
];

#[test]
fn the_command_uses_the_library_and_makes_no_system_calls_of_its_own() {
    let (_, files) = sources("bin");
    assert!(files.len() > 3, "only {} files under bin/", files.len());
    let mut wrong = Vec::new();
    let mut library_paths = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (number, line) in text.lines().enumerate() {
            let code = code_of(line);
            library_paths += code.matches("procpool::").count();
            for (word, why) in NOT_IN_THE_COMMAND {
                if code.contains(word) {
                    wrong.push(format!(
                        "{}:{}: `{word}` in the command: {why}",
                        file.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert_none_wrong(&wrong, library_paths, 20, "procpool:: paths in the command");
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
    assert_eq!(
        super_climbs("use super::super::shm; let x = super::f(); my_super::g"),
        [2, 1]
    );
    assert!(opens_inline_module("mod tests {") && opens_inline_module("pub(crate) mod a {"));
    assert!(!opens_inline_module("mod tests;") && !opens_inline_module("let model = {"));
    let src = Path::new("/r/src");
    assert_eq!(
        module_path(src, Path::new("/r/src/lab/advice/mod.rs")),
        ["lab", "advice"]
    );
    assert_eq!(module_path(src, Path::new("/r/src/error.rs")), ["error"]);
}

//! The documentation against the code: every relative link in `README.md`, `CHANGELOG.md`
//! and `docs/` resolves, and every `procpool` command they show parses with the current
//! command line: each in a `sh` block, and each in a transcript (`$ procpool …`) that the
//! transcript shows running rather than refused. A command is checked by running it with
//! `--help` added, which parses every argument and runs nothing.

use std::path::{Path, PathBuf};

const EXE: &str = env!("CARGO_BIN_EXE_procpool");

/// The Markdown files of the documentation.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    if root.join("CHANGELOG.md").exists() {
        files.push(root.join("CHANGELOG.md"));
    }
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The targets of the inline links `[text](target)` in `text`, outside code.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    found
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in documents() {
        let text = std::fs::read_to_string(&file).expect("read a document");
        for target in links(&text) {
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            checked += 1;
            let resolved = file.parent().expect("a directory").join(path);
            if !resolved.exists() {
                broken.push(format!("{}: ({target})", file.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links that lead nowhere:\n{}",
        broken.join("\n")
    );
    eprintln!("{checked} relative links resolve");
}

/// A command a document shows: where, and its words after `procpool`.
struct Shown {
    place: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

/// Splits a shell command line into words: spaces separate, quotes group (no expansion).
fn words(line: &str) -> Vec<String> {
    let (mut out, mut word, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, ' ' | '\t') => {
                if any || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (None, c) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        out.push(word);
    }
    out
}

/// The `procpool` command in one shell line, if it runs one: `procpool ARGS` or
/// `cargo run --release -- ARGS`, after `VAR=value` assignments, up to a pipe, a
/// redirection, a `;`, `&&` or a comment.
fn command(line: &str, place: String) -> Option<Shown> {
    let line = line.trim().strip_prefix("$ ").unwrap_or(line.trim());
    let cut = line
        .find(['|', '>', ';', '#', '&', '<'])
        .map_or(line, |at| &line[..at]);
    let mut words = words(cut).into_iter().peekable();
    let mut env = Vec::new();
    while let Some((name, value)) = words.peek().and_then(|w| w.split_once('=')) {
        if !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') || name.is_empty() {
            break;
        }
        env.push((name.to_string(), value.to_string()));
        words.next();
    }
    let first = words.next()?;
    let args: Vec<String> = match first.as_str() {
        "procpool" => words.collect(),
        "cargo" => {
            let rest: Vec<String> = words.collect();
            let sep = rest.iter().position(|w| w == "--")?;
            if rest.first().map(String::as_str) != Some("run")
                || rest[..sep].iter().any(|w| w == "--example")
            {
                return None;
            }
            rest[sep + 1..].to_vec()
        }
        _ => return None,
    };
    Some(Shown { place, env, args })
}

/// Every command the documents show as one to run.
fn shown_commands() -> Vec<Shown> {
    let mut shown = Vec::new();
    for file in documents() {
        let text = std::fs::read_to_string(&file).expect("read a document");
        let lines: Vec<&str> = text.lines().collect();
        let mut block: Option<&str> = None;
        for (i, line) in lines.iter().enumerate() {
            if let Some(fence) = line.trim_start().strip_prefix("```") {
                block = match block {
                    Some(_) => None,
                    None => Some(fence.trim()),
                };
                continue;
            }
            let place = format!("{}:{}", file.display(), i + 1);
            match block {
                Some("sh" | "bash" | "console") => shown.extend(command(line, place)),
                Some(_) if line.starts_with("$ ") => {
                    // A transcript: checked when what follows is not a refusal.
                    let next = lines.get(i + 1).copied().unwrap_or_default();
                    let refused = next.starts_with("procpool:") && !next.contains(" on ")
                        || next.starts_with("error");
                    if !refused {
                        shown.extend(command(line, place));
                    }
                }
                _ => {}
            }
        }
    }
    shown
}

#[test]
fn every_command_the_documents_show_parses() {
    let shown = shown_commands();
    assert!(
        shown.len() >= 3,
        "only {} commands found: is the scan reading the documents?",
        shown.len()
    );
    let mut wrong = Vec::new();
    for command in &shown {
        let out = std::process::Command::new(EXE)
            .args(&command.args)
            .arg("--help")
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run procpool");
        if !out.status.success() {
            wrong.push(format!(
                "{}: procpool {} → {}",
                command.place,
                command.args.join(" "),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or_default()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "commands that do not parse:\n{}",
        wrong.join("\n")
    );
    eprintln!("{} commands parse", shown.len());
}

#[test]
fn the_command_scanner_reads_shell_lines_as_a_shell_would() {
    let shown = command(
        "$ PROCPOOL_WORKERS=3 procpool --json 'a b' squares 10 | jq .",
        "x".into(),
    )
    .expect("a procpool command");
    assert_eq!(
        shown.env,
        [("PROCPOOL_WORKERS".to_string(), "3".to_string())]
    );
    assert_eq!(shown.args, ["--json", "a b", "squares", "10"]);
    let cargo = command(
        "cargo run --release -- --workers 8 squares 1e7   # the main job",
        "x".into(),
    )
    .expect("cargo run");
    assert_eq!(cargo.args, ["--workers", "8", "squares", "1e7"]);
    assert!(command("cargo run --release --example matvec", "x".into()).is_none());
    assert!(command("mpirun -np 3 procpool squares 10", "x".into()).is_none());
    assert_eq!(
        links("see [a](docs/a.md) and [b](https://x.y) `[c](no)`"),
        ["docs/a.md", "https://x.y", "no"]
    );
}

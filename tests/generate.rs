//! `procpool generate` writes completion scripts and the man page from the clap definition:
//! each must load in its shell or render as a man page, and name what the command takes.
//! A check whose tool (bash, zsh, fish, man or groff) is missing is skipped, saying so.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{EXIT_OK, procpool};

/// `procpool generate ARGS...`'s stdout, after checking it succeeded.
fn generated(args: &[&str]) -> String {
    let mut all = vec!["generate"];
    all.extend_from_slice(args);
    let out = procpool(&all);
    out.assert_code(EXIT_OK);
    assert!(out.stderr.is_empty(), "{}: {}", out.args, out.stderr);
    assert!(!out.stdout.is_empty(), "{}: nothing generated", out.args);
    out.stdout
}

/// Whether `program` can be run (`program --version` exits), or why the test skips.
fn have(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("skipped: `{program}` is not installed");
    }
    found
}

/// Runs `program ARGS...` with `input` on stdin; returns (success, stdout, stderr).
fn run_with_input(program: &str, args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_string();
    // Written from a thread, so a child that stops reading cannot block the test.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bash_completion_sources_cleanly_and_registers_procpool() {
    if !have("bash") {
        return;
    }
    let script = generated(&["completions", "bash"]);
    assert!(script.contains("--workers") && script.contains("ipc-bench"));
    let (ok, stdout, stderr) = run_with_input(
        "bash",
        &[
            "--norc",
            "--noprofile",
            "-c",
            "source /dev/stdin; complete -p procpool",
        ],
        &script,
    );
    assert!(ok, "sourcing failed:\n{stderr}");
    assert!(stderr.is_empty(), "sourcing printed errors:\n{stderr}");
    assert!(
        stdout.contains("complete") && stdout.contains("procpool"),
        "`complete -p procpool` printed: {stdout}"
    );
}

#[test]
fn bash_completion_offers_workloads_and_only_the_options_a_tool_uses() {
    if !have("bash") {
        return;
    }
    let script = generated(&["completions", "bash"]);
    // COMP_WORDS as bash fills them for `procpool <TAB>` and `procpool ipc-bench --<TAB>`.
    let complete = |words: &str, cword: usize| {
        let program = format!(
            "source /dev/stdin; COMP_WORDS=({words}); COMP_CWORD={cword}; \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             _procpool procpool \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let (ok, stdout, stderr) = run_with_input("bash", &["--norc", "-c", &program], &script);
        assert!(ok, "{words}: {stderr}");
        stdout
    };
    let top = complete("procpool ''", 1);
    for word in ["squares", "sweep", "ipc-bench", "list", "generate"] {
        assert!(top.lines().any(|l| l == word), "{word} not offered:\n{top}");
    }
    let ipc = complete("procpool ipc-bench --", 2);
    assert!(ipc.lines().any(|l| l == "--round-trips"), "{ipc}");
    assert!(!ipc.lines().any(|l| l == "--workers"), "{ipc}");
    let run = complete("procpool squares 10 --", 3);
    assert!(run.lines().any(|l| l == "--workers"), "{run}");
    let sweep = complete("procpool sweep hash 10 --", 4);
    for flag in ["--workers", "--plot", "--rounds"] {
        assert!(
            sweep.lines().any(|l| l == flag),
            "{flag} not offered:\n{sweep}"
        );
    }
}

#[test]
fn zsh_completion_loads() {
    if !have("zsh") {
        return;
    }
    let script = generated(&["completions", "zsh"]);
    let (ok, _, stderr) = run_with_input(
        "zsh",
        &[
            "-f",
            "-c",
            "autoload -Uz compinit && compinit -u && source /dev/stdin",
        ],
        &script,
    );
    assert!(ok && stderr.is_empty(), "zsh:\n{stderr}");
}

#[test]
fn fish_completion_loads() {
    if !have("fish") {
        return;
    }
    let script = generated(&["completions", "fish"]);
    let (ok, stdout, stderr) = run_with_input(
        "fish",
        &["--no-config", "-c", "source; complete -C 'procpool ipc-'"],
        &script,
    );
    assert!(ok && stderr.is_empty(), "fish:\n{stderr}");
    assert!(stdout.contains("ipc-bench"), "{stdout}");
}

#[test]
fn every_shell_gets_a_script() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = generated(&["completions", shell]);
        assert!(script.contains("procpool"), "{shell}:\n{script}");
    }
}

#[test]
fn man_page_renders_and_names_the_subcommands_and_flags() {
    let page = generated(&["man"]);
    assert!(page.contains(".TH"), "not roff:\n{page}");
    // Rendered by man where it is installed, by groff otherwise.
    let (rendered, stderr) = if have("man") {
        let (ok, out, err) = run_with_input("man", &["-l", "-"], &page);
        assert!(ok, "man -l failed:\n{err}");
        (out, err)
    } else if have("groff") {
        let (ok, out, err) = run_with_input("groff", &["-man", "-Tutf8"], &page);
        assert!(ok, "groff failed:\n{err}");
        (out, err)
    } else {
        eprintln!("skipped rendering: neither man nor groff is installed");
        (page.clone(), String::new())
    };
    assert!(
        !stderr.contains("warning") && !stderr.contains("error"),
        "{stderr}"
    );
    // Renderers may hyphenate or embolden with backspaces: compare the plain text.
    let text: String = plain(&rendered);
    for word in [
        "procpool",
        "squares",
        "sweep",
        "ipc-bench",
        "list",
        "generate",
        "--workers",
        "--chunk-size",
        "--inject",
        "--json",
        "WORKERS AND CHUNKS",
        "PROCPOOL IPC-BENCH",
        "--round-trips",
        "PROCPOOL MANDELBROT",
        "--max-iter",
        "PROCPOOL SWEEP",
        "--plot",
    ] {
        assert!(text.contains(word), "the man page misses {word}:\n{text}");
    }
}

/// Rendered man text without overstrike (`x\x08x`) and with `‐` as `-`.
fn plain(rendered: &str) -> String {
    let mut out = String::new();
    for c in rendered.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(match c {
                '\u{2010}' | '\u{2212}' => '-',
                c => c,
            });
        }
    }
    out
}

//! `--help` fits the screen, groups the options of a run under headings, and offers each
//! subcommand only the options it uses.

mod common;

use common::{EXIT_OK, Procpool};

/// Every command line that has a `--help`.
const COMMANDS: &[&[&str]] = &[
    &[],
    &["squares"],
    &["primes"],
    &["collatz"],
    &["mandelbrot"],
    &["hash"],
    &["spin"],
    &["sleep"],
    &["list"],
    &["sweep"],
    &["sweep", "hash"],
    &["sweep", "mandelbrot"],
    &["ipc-bench"],
    &["generate"],
    &["generate", "completions"],
    &["generate", "man"],
];

/// `procpool ARGS... FLAG` with the terminal `columns` wide; its stdout.
fn help(args: &[&str], flag: &str, columns: usize) -> String {
    let mut all = args.to_vec();
    all.push(flag);
    let out = Procpool::new(&all)
        .env("COLUMNS", columns.to_string())
        .run();
    out.assert_code(EXIT_OK);
    out.stdout
}

#[test]
fn every_help_fits_100_and_80_columns() {
    for args in COMMANDS {
        for flag in ["--help", "-h"] {
            for columns in [100, 80] {
                let text = help(args, flag, columns);
                for line in text.lines() {
                    assert!(
                        line.chars().count() <= columns,
                        "procpool {} {flag} at {columns} columns: a line of {} columns:\n{line}",
                        args.join(" "),
                        line.chars().count()
                    );
                }
            }
        }
    }
}

#[test]
fn options_of_a_run_are_grouped_under_headings() {
    for args in [&[][..], &["squares"][..], &["sweep", "hash"][..]] {
        let text = help(args, "--help", 100);
        if args.first() == Some(&"sweep") {
            assert!(text.contains("Sweep output:"), "{text}");
        }
        let output = text.find("Output:").expect("an Output heading");
        for flag in ["--output <FILE>", "--window-size", "--json"] {
            let at = text
                .find(flag)
                .unwrap_or_else(|| panic!("{args:?}: no {flag}"));
            assert!(at > output, "{args:?}: {flag} is not under Output:\n{text}");
        }
        let mut at = 0;
        for heading in [
            "Workers and chunks:",
            "Supervision:",
            "Measurement:",
            "Output:",
        ] {
            let found = text[at..]
                .find(heading)
                .unwrap_or_else(|| panic!("{args:?}: no {heading} after byte {at}:\n{text}"));
            at += found;
        }
    }
}

#[test]
fn a_tool_shows_only_the_options_it_uses() {
    let text = help(&["ipc-bench"], "--help", 100);
    assert!(
        text.contains("--round-trips") && text.contains("--json"),
        "{text}"
    );
    for unused in ["--workers", "--inject", "--output", "--repeat"] {
        assert!(!text.contains(unused), "ipc-bench offers {unused}:\n{text}");
    }
    let text = help(&["list"], "--help", 100);
    assert!(
        text.contains("--json") && !text.contains("--workers"),
        "{text}"
    );
    let text = help(&["generate", "man"], "--help", 100);
    assert!(
        !text.contains("--json") && !text.contains("--workers"),
        "{text}"
    );
}

#[test]
fn list_json_is_the_catalogue() {
    let out = Procpool::new(&["list", "--json"]).run();
    out.assert_code(EXIT_OK);
    let value: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(value["schema_version"], 1);
    assert_eq!(value["procpool_version"], env!("CARGO_PKG_VERSION"));
    let entries = value["workloads"]
        .as_array()
        .expect("an array of workloads");
    assert_eq!(
        entries.len(),
        procpool::workload::catalogue::CATALOGUE.len()
    );
    for (entry, expected) in entries.iter().zip(procpool::workload::catalogue::CATALOGUE) {
        assert_eq!(entry["name"], expected.name);
        assert_eq!(entry["args"], expected.args);
        assert_eq!(entry["output"], expected.output);
        assert_eq!(entry["bound"], expected.bound);
        assert_eq!(entry["shows"], expected.shows);
    }
    assert_eq!(entries[0]["name"], "squares");
}

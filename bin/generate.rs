//! `procpool generate`: shell completions and the man page, both from the clap definition,
//! so they never drift from what the command accepts.

use std::collections::HashSet;

use crate::cli::{Generate, command, completion_command};

/// The completion script or the man page, as text for stdout.
pub(crate) fn generate(what: Generate) -> anyhow::Result<String> {
    let mut out = Vec::new();
    match what {
        Generate::Completions { shell } => {
            clap_complete::generate(shell, &mut completion_command(), "procpool", &mut out);
        }
        Generate::Man => {
            let cmd = command();
            clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
            subcommand_options(&cmd, "procpool", &mut HashSet::new(), &mut out)?;
        }
    }
    Ok(String::from_utf8(out)?)
}

/// One section per subcommand with options of its own (`PROCPOOL IPC-BENCH`), after the
/// page of the options every run takes: one page holds the whole command. A subcommand met
/// again (the workloads under `sweep`) is not repeated.
fn subcommand_options(
    cmd: &clap::Command,
    name: &str,
    seen: &mut HashSet<String>,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{name} {}", sub.get_name());
        let heading = full.to_uppercase();
        let own: Vec<clap::Arg> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
            .map(|a| a.clone().help_heading(heading.clone()))
            .collect();
        if !own.is_empty() && seen.insert(sub.get_name().to_string()) {
            let section = clap::Command::new(full.clone())
                .disable_help_flag(true)
                .disable_version_flag(true)
                .args(own);
            clap_mangen::Man::new(section).render_options_section(out)?;
        }
        subcommand_options(sub, &full, seen, out)?;
    }
    Ok(())
}

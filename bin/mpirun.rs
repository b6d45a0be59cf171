//! `procpool --backend mpi --ranks K`: the library starts `mpirun -np K` on this command
//! line ([`procpool::mpi::run_mpirun`]); this module hands it the command line without
//! `--ranks` and words how mpirun ended (a rank lost after the chunks, an interrupt) as
//! procpool's messages and exit codes.

use std::process::ExitCode;

use anyhow::Context;
use procpool::mpi::MpirunEnd;
use procpool::{Interrupt, Report};

use crate::{EXIT_FAILED, EXIT_USAGE};

/// Runs `mpirun -np K` on this same command line without `--ranks`, waits for it, and
/// turns its end into procpool's exit codes: 130 or 143 when interrupted (mpirun itself
/// would exit 1), 2 when a rank refused the input, 1 when the job failed.
pub(crate) fn launch(ranks: u64, interrupt: &Interrupt) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find this program to start its ranks")?;
    // The same command line without --ranks K.
    let mut args = Vec::new();
    let mut given = std::env::args_os().skip(1);
    while let Some(arg) = given.next() {
        match arg.to_str() {
            Some("--ranks") => {
                given.next();
            }
            Some(a) if a.starts_with("--ranks=") => {}
            _ => args.push(arg),
        }
    }
    Ok(
        match procpool::mpi::run_mpirun(ranks, &exe, &args, interrupt)? {
            MpirunEnd::Finished => ExitCode::SUCCESS,
            MpirunEnd::Refused => ExitCode::from(EXIT_USAGE),
            MpirunEnd::Failed(why) => {
                // Else rank 0 said why, here or on stderr.
                if let Some(why) = why {
                    eprintln!("procpool: {why}");
                }
                ExitCode::from(EXIT_FAILED)
            }
            MpirunEnd::Interrupted { signal, killed } => {
                if killed {
                    eprintln!(
                        "procpool: interrupted again by {}: mpirun and its ranks were killed",
                        signal_name(signal)
                    );
                } else {
                    eprintln!(
                        "procpool: interrupted by {}: mpirun stopped every rank",
                        signal_name(signal)
                    );
                }
                ExitCode::from(128 + signal as u8)
            }
        },
    )
}

/// The two signals the launcher passes on, by name.
fn signal_name(signal: i32) -> &'static str {
    match signal {
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// On rank 0 under `procpool --ranks`: when it left `e` for the launcher to print (see
/// [`procpool::mpi::error_left_to_launcher`]), exits with `e`'s code without printing it;
/// otherwise returns it.
pub(crate) fn exit_if_left_to_launcher(e: procpool::Error) -> anyhow::Result<Option<Report>> {
    if procpool::mpi::error_left_to_launcher() {
        let code = e
            .interrupted_by()
            .map_or(i32::from(EXIT_FAILED), |s| 128 + s);
        std::process::exit(code);
    }
    Err(e.into())
}

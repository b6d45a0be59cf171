//! `procpool --backend mpi --ranks K`: procpool starts `mpirun -np K` on its own command
//! line, in a private directory, and says what mpirun does not (a rank lost after the
//! chunks, an interrupt's exit code).

use std::process::ExitCode;

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use procpool::{Interrupt, Report};

use crate::{EXIT_FAILED, EXIT_USAGE, under_mpirun, usage};

/// Runs `mpirun -np K` on this same command line without `--ranks`, waits for it, and
/// turns its end into procpool's exit codes. mpirun answers its own SIGINT or SIGTERM by
/// stopping every rank and exiting 1 whatever the ranks did (Open MPI's choice, fixed in
/// its launcher), so the signal is caught here and passed on, and this process exits 130
/// or 143 once mpirun is done. A second signal ends mpirun and its ranks at once (SIGKILL
/// to each) and exits; either way the run's directory, with Open MPI's
/// session directory in it, is removed before procpool exits.
pub(crate) fn launch(ranks: u64, interrupt: &Interrupt) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    if under_mpirun() {
        return Err(usage(
            "--ranks starts mpirun itself: under mpirun, drop it (mpirun's -np sets the ranks)",
        ));
    }
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
    // SIGINT and SIGTERM are taken here, one by one, instead of by the handlers that make
    // a second one exit at once: this process cleans up after mpirun first. (This thread
    // is the only one.)
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .context("cannot take SIGINT and SIGTERM")?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("cannot take SIGINT and SIGTERM")?;
    let mut launch = procpool::mpi::Launch::create()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mut mpirun = std::process::Command::new("mpirun");
    mpirun.arg("-np").arg(ranks.to_string());
    if ranks > cpus {
        mpirun.arg("--oversubscribe");
    }
    // mpirun in a process group of its own: a Ctrl-C reaches this process only, and mpirun
    // gets one SIGTERM from it (a second signal within 5 s makes mpirun exit without
    // stopping the ranks). Its stdin is not the terminal, which only the foreground group
    // may read.
    mpirun
        .arg(&exe)
        .args(&args)
        .envs(launch.env())
        .stdin(std::process::Stdio::null())
        .process_group(0);
    // If this process is killed outright (SIGKILL, which it cannot pass on), mpirun gets
    // SIGTERM from the kernel and stops the ranks: no job runs on without its launcher.
    // The child inherits the mask set above: mpirun must take SIGINT and SIGTERM again.
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes one prctl and one sigprocmask system
    // call (pthread_sigmask) and allocates nothing.
    unsafe {
        mpirun.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            signals.thread_unblock().map_err(std::io::Error::from)
        })
    };
    let mut child = mpirun.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => usage(
            "--ranks runs mpirun, which is not installed: apt-get install openmpi-bin \
                 libopenmpi-dev (README: \"Beyond one machine\")",
        ),
        _ => anyhow::anyhow!("cannot start mpirun: {e}"),
    })?;
    let mpirun_pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // A signal that arrived before the mask was set went to the handlers.
    let mut passed_on = interrupt.requested();
    if passed_on.is_some() {
        let _ = nix::sys::signal::kill(mpirun_pid, Signal::SIGTERM);
    }
    let status = loop {
        if let Some(status) = child.try_wait().context("cannot wait for mpirun")? {
            break status;
        }
        launch.watch();
        if let Ok(Some(info)) = signal_fd.read_signal() {
            let signal = info.ssi_signo as i32;
            if passed_on.is_some() {
                // The second: mpirun and its ranks now, then this process.
                procpool::mpi::kill_mpirun(child.id());
                let _ = child.wait();
                drop(launch);
                eprintln!(
                    "procpool: interrupted again by {}: mpirun and its ranks were killed",
                    signal_name(signal)
                );
                return Ok(ExitCode::from(128 + signal as u8));
            }
            let _ = nix::sys::signal::kill(mpirun_pid, Signal::SIGTERM);
            passed_on = Some(signal);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    if let Some(signal) = passed_on {
        eprintln!(
            "procpool: interrupted by {}: mpirun stopped every rank",
            signal_name(signal)
        );
        return Ok(ExitCode::from(128 + signal as u8));
    }
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(2) => ExitCode::from(EXIT_USAGE),
        // A rank that died (mpirun exits with its status or 128 + its signal) or failed:
        // rank 0 said why, here or on stderr.
        _ => {
            if let Some(why) = launch.failure(status.code()) {
                eprintln!("procpool: {why}");
            }
            ExitCode::from(EXIT_FAILED)
        }
    })
}

fn signal_name(signal: i32) -> &'static str {
    Signal::try_from(signal).map_or("a signal", |s| s.as_str())
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

//! Nothing is left behind: after a run that succeeds, fails or is refused, no process it
//! started is running, its `TMPDIR` and working directory are empty (ipc-channel's one-shot
//! handshake sockets live under `TMPDIR`), and `/dev/shm` has no new entry.

mod common;

use std::time::Duration;

use common::{
    EXIT_FAILED, EXIT_OK, EXIT_USAGE, Sandbox, assert_no_tagged_process, dir_entries, wait_until,
};
use nix::sys::signal::Signal;

#[test]
fn successful_run_leaves_no_process_socket_or_shm_entry() {
    for args in [
        &["--workers", "3", "squares", "1e5"][..],
        &["--workers", "8", "squares", "1e6", "--json"][..],
        &["--workers", "2", "squares", "0"][..],
        &["--workers", "2", "squares", "1e5", "--no-baseline"][..],
    ] {
        let sandbox = Sandbox::new();
        let out = sandbox.run(args);
        out.assert_code(EXIT_OK);
        sandbox.assert_nothing_left(&out);
    }
}

#[test]
fn mismatched_run_leaves_nothing_behind() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&["--workers", "2", "squares", "1000", "--inject", "corrupt@0"]);
    out.assert_code(EXIT_FAILED);
    assert!(out.stderr.contains("element 0"), "{}", out.stderr);
    sandbox.assert_nothing_left(&out);
}

#[test]
fn refused_run_leaves_nothing_behind() {
    for args in [
        &["--workers", "0", "squares", "10"][..],
        &["--workers", "2", "squares", "1e13"][..],
        &["--workers", "2", "cubes", "10"][..],
    ] {
        let sandbox = Sandbox::new();
        let out = sandbox.run(args);
        out.assert_code(EXIT_USAGE);
        sandbox.assert_nothing_left(&out);
    }
}

#[test]
fn chunk_that_always_kills_its_worker_fails_the_run_and_leaves_nothing_behind() {
    // `:always` fires on every attempt: after the retries (default 3) the run fails.
    let sandbox = Sandbox::new();
    let out = sandbox.run(&[
        "--workers",
        "2",
        "squares",
        "1e5",
        "--inject",
        "kill@1:always",
    ]);
    out.assert_code(EXIT_FAILED);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("chunk 1 ")
            && last.contains("failed 4 times")
            && last.contains("killed by SIGKILL"),
        "names the chunk, the attempts and how its last worker died: {}",
        out.stderr
    );
    sandbox.assert_nothing_left(&out);
}

#[test]
fn worker_killed_once_is_replaced_and_leaves_nothing_behind() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&[
        "--workers",
        "2",
        "squares",
        "1e5",
        "--inject",
        "kill@1",
        "--json",
    ]);
    out.assert_code(EXIT_OK);
    let report = out.json();
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["restarts"], 1, "{report}");
    sandbox.assert_nothing_left(&out);
}

#[test]
fn workers_crashing_in_every_way_leave_nothing_behind() {
    // Crashing workers must not leave core files in the working directory either; whether
    // the kernel writes one is the machine's setting, so turn them off for this process and
    // its children.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_CORE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_CORE, 0, hard).expect("setrlimit");

    for (fault, cause) in [
        ("abort@1:always", "killed by SIGABRT"),
        ("segv@1:always", "killed by SIGSEGV"),
        ("panic@1:always", "the kernel panicked on chunk 1"),
        ("exit@1:always", "exited with status 3"),
        ("kill@0:always", "killed by SIGKILL"),
    ] {
        let sandbox = Sandbox::new();
        let out = sandbox
            .command(&["--workers", "3", "squares", "1e5", "--inject", fault])
            .env("RUST_BACKTRACE", "0")
            .run();
        out.assert_code(EXIT_FAILED);
        // A panicking worker prints its panic message first; procpool's own line is last.
        let last = out.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("procpool: ") && last.contains(cause),
            "{fault}: the last line says `{cause}`:\n{}",
            out.stderr
        );
        sandbox.assert_nothing_left(&out);
    }
}

/// Starts `procpool --workers 2 squares 1e5 --inject hang@0` (a job that never ends), waits
/// until both workers have connected, sends `signal` to procpool, and checks that procpool
/// ends and nothing it started remains.
fn interrupt_mid_run(signal: Signal) {
    // procpool installs its own SIGINT and SIGTERM handlers, so the test runs the same when
    // it was started with those signals ignored (`cargo test &` in a script, nohup).
    let sandbox = Sandbox::new();
    // `:always`: the job can never finish, whatever the supervisor does about hung workers.
    let mut running = sandbox
        .command(&[
            "--workers",
            "2",
            "squares",
            "1e5",
            "--inject",
            "hang@0:always",
        ])
        .spawn();
    // procpool and two workers exist, and the workers' handshake sockets are gone from the
    // pool's private directory (each goes once procpool connected): the job is under way.
    let private_dir = || {
        let entries = dir_entries(sandbox.tmpdir());
        let name = entries.first()?.to_string_lossy().into_owned();
        (entries.len() == 1 && name.starts_with("procpool-")).then(|| sandbox.tmpdir().join(name))
    };
    let started = wait_until(Duration::from_secs(30), || {
        running.processes().len() >= 3 && private_dir().is_some_and(|d| dir_entries(&d).is_empty())
    });
    assert!(
        started,
        "procpool {} did not start its workers: {:?}",
        running.args,
        running.processes()
    );
    running.signal(signal);
    let status = running.wait(Duration::from_secs(10));
    assert!(
        status.is_some(),
        "procpool {} did not end within 10 s of {signal}",
        running.args
    );
    if signal == Signal::SIGKILL {
        // Nothing can clean up after SIGKILL: the pool's private directory stays, and the
        // next procpool in this TMPDIR removes it (its owner's pid no longer exists).
        assert_no_tagged_process(&running.tag, &running.args);
        assert!(
            private_dir().is_some(),
            "the killed pool's directory is the one thing left"
        );
        let next = sandbox.run(&["--workers", "1", "squares", "10"]);
        next.assert_code(0);
        sandbox.assert_nothing_left(&next);
    } else {
        sandbox.assert_nothing_left_by(&running.tag, &running.args);
    }
}

#[test]
fn procpool_killed_mid_run_leaves_no_worker_behind() {
    interrupt_mid_run(Signal::SIGKILL);
}

#[test]
fn procpool_interrupted_mid_run_leaves_no_worker_behind() {
    interrupt_mid_run(Signal::SIGINT);
}

#[test]
fn procpool_terminated_mid_run_leaves_no_worker_behind() {
    interrupt_mid_run(Signal::SIGTERM);
}

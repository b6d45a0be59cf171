//! What an adversarial trial of procpool broke, one regression test each: the handshake
//! (who can reach a worker's socket, whose word procpool takes), workers that die or hang
//! while they start, a dispatch loop that must never wait on a full channel or a full
//! stderr, and a temp directory too long for a socket path.
//!
//! Real processes throughout: the real binary, shell-script wrappers around it that kill
//! or stop themselves before they connect, real signals, real pipes.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    EXE, EXIT_USAGE, Procpool, Sandbox, TEARDOWN_DEADLINE, assert_no_tagged_process,
    children_of_this_process, dir_entries, is_our_child, wait_child, wait_until, write_script,
};
use nix::sys::signal::Signal;
use procpool::workload::Squares;
use procpool::{Dispatch, JobOptions, Pool};

/// A worker executable that runs the real one, except that the starts whose number
/// (1, 2, … in the order the shell scripts get their ticket) is in `kill` SIGKILL
/// themselves and those in `stop` SIGSTOP themselves before they can connect.
fn wrapper(dir: &Path, kill: &[u32], stop: &[u32]) -> PathBuf {
    let list = |xs: &[u32]| xs.iter().map(u32::to_string).collect::<Vec<_>>().join("|");
    let (kill, stop) = (list(kill), list(stop));
    let body = format!(
        r#"#!/bin/sh
n=1
while ! mkdir "{tickets}/start.$n" 2>/dev/null; do n=$((n+1)); done
case "$n" in {kill}) kill -KILL $$ ;; esac
case "$n" in {stop}) kill -STOP $$ ;; esac
exec "{exe}" "$@"
"#,
        tickets = dir.display(),
        kill = if kill.is_empty() { "0" } else { &kill },
        stop = if stop.is_empty() { "0" } else { &stop },
        exe = EXE,
    );
    write_script(dir, "worker.sh", &body)
}

fn assert_squares(results: &[u64], n: u64) {
    assert_eq!(results.len() as u64, n);
    if let Some(i) = (0..n).find(|&i| results[i as usize] != i * i) {
        panic!(
            "results[{i}] is {}, expected {}",
            results[i as usize],
            i * i
        );
    }
}

/// Every process this test started through `pids` is reaped.
fn assert_reaped(pids: &[u32]) {
    let gone = wait_until(TEARDOWN_DEADLINE, || !pids.iter().any(|&p| is_our_child(p)));
    let left: Vec<u32> = pids.iter().copied().filter(|&p| is_our_child(p)).collect();
    for &pid in &left {
        common::kill(pid);
    }
    assert!(gone, "workers {left:?} are still our children");
}

#[test]
fn workers_killed_before_they_connect_are_replaced_within_the_restart_limit() {
    let scratch = tempfile::tempdir().unwrap();
    // Both first starts die before connecting; the two after them work.
    let exe = wrapper(scratch.path(), &[1, 2], &[]);
    let mut pool = Pool::builder()
        .workers(2)
        .worker_exe(&exe)
        .build()
        .expect("the pool starts with replacements for the workers that died");
    let pids = pool.pids();
    let run = pool.run(&Squares, 50_000).expect("the job runs");
    assert_squares(run.results(), 50_000);
    let stats = run.stats().clone();
    assert_eq!(stats.restarts, 2, "{:?}", stats.deaths);
    assert_eq!(stats.deaths.len(), 2);
    // Which starts get killed depends on who takes a ticket first: a replacement may be
    // killed in turn, so a replacement is either a worker of the pool or a later death.
    let died: Vec<u32> = stats.deaths.iter().map(|d| d.pid).collect();
    for death in &stats.deaths {
        assert_eq!(death.cause, "killed by SIGKILL before it connected");
        assert_eq!(death.chunk, None);
        assert!(
            death
                .replaced_by
                .is_some_and(|p| pids.contains(&p) || died.contains(&p)),
            "{:?}",
            stats.deaths
        );
    }
    drop(run);
    pool.shutdown();
    assert_reaped(&pids);
}

#[test]
fn a_start_that_keeps_dying_fails_once_the_restart_limit_is_spent() {
    let scratch = tempfile::tempdir().unwrap();
    let exe = wrapper(scratch.path(), &[1, 2, 3, 4, 5, 6, 7, 8], &[]);
    let supervision = procpool::Supervision {
        max_restarts: Some(3),
        ..Default::default()
    };
    let err = Pool::builder()
        .workers(1)
        .worker_exe(&exe)
        .supervision(supervision)
        .build()
        .expect_err("every start dies");
    let text = err.to_string();
    assert!(
        text.contains("exceed `max_restarts` 3") && text.contains("before it connected"),
        "{text}"
    );
    // Four starts: the first and three restarts; nothing of them is left.
    assert_eq!(
        dir_entries(scratch.path()).len(),
        5,
        "4 tickets and the script"
    );
    assert!(
        children_of_this_process()
            .iter()
            .all(|(_, c)| c != "worker.sh")
    );
}

on_both_dispatches!(a_replacement_killed_during_its_handshake_is_one_more_restart);

/// A worker that dies while it starts, mid-job, is its handshake's business on both
/// dispatches: one more restart, never a chunk's blame nor a second replacement.
fn a_replacement_killed_during_its_handshake_is_one_more_restart(dispatch: &'static str) {
    let scratch = tempfile::tempdir().unwrap();
    // Starts 1 and 2 are the pool; 3 replaces the worker that chunk 2 kills, and dies
    // before connecting; 4 replaces it.
    let exe = wrapper(scratch.path(), &[3], &[]);
    let mut pool = Pool::builder().workers(2).worker_exe(&exe).build().unwrap();
    // Long enough (4000 chunks) that the replacement's fate is known before the job ends.
    let options = JobOptions {
        chunk_size: Some(1_000),
        faults: vec!["kill@2".parse().unwrap()],
        dispatch: match dispatch {
            "queue" => Dispatch::Queue,
            _ => Dispatch::Channel,
        },
        ..Default::default()
    };
    let run = pool
        .run_with(&Squares, 4_000_000, &options)
        .expect("the job survives");
    assert_squares(run.results(), 4_000_000);
    let stats = run.stats().clone();
    assert_eq!(stats.restarts, 2, "{:?}", stats.deaths);
    assert_eq!(stats.deaths[0].chunk, Some(2));
    assert_eq!(stats.deaths[0].cause, "killed by SIGKILL");
    assert_eq!(
        stats.deaths[1].cause,
        "killed by SIGKILL before it connected"
    );
    drop(run);
    let pids = pool.pids();
    pool.shutdown();
    assert_reaped(&pids);
}

#[test]
fn a_hung_replacement_does_not_hold_up_the_other_workers() {
    let scratch = tempfile::tempdir().unwrap();
    // Start 3 (the replacement) stops itself before connecting, and would only be given up
    // after the 60 s handshake deadline; the job must not wait for it.
    let exe = wrapper(scratch.path(), &[], &[3]);
    let mut pool = Pool::builder()
        .workers(2)
        .worker_exe(&exe)
        .handshake_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let options = JobOptions {
        chunk_size: Some(1_000),
        faults: vec!["kill@2".parse().unwrap()],
        ..Default::default()
    };
    let run = pool
        .run_with(&Squares, 200_000, &options)
        .expect("the job finishes");
    assert_squares(run.results(), 200_000);
    let stats = run.stats().clone();
    assert_eq!(
        stats.deaths.len(),
        1,
        "only the killed worker died; its replacement is still starting: {:?}",
        stats.deaths
    );
    let survivor = stats
        .workers
        .iter()
        .find(|w| w.id != stats.deaths[0].id)
        .expect("the other worker");
    assert!(
        survivor.chunks >= stats.chunks - 3,
        "the other worker did the rest: {:?}",
        stats.workers
    );
    drop(run);
    let pids = pool.pids();
    // The stopped replacement is killed and reaped with the pool.
    pool.shutdown();
    assert_reaped(&pids);
}

#[test]
fn a_worker_reporting_a_socket_outside_the_private_directory_is_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let decoy = scratch.path().join("decoy.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&decoy).unwrap();
    // A fake worker: reports a path procpool did not give it, then waits to be killed.
    // (Through /proc: a POSIX sh redirects only single-digit descriptors, and the report
    // pipe's number is 10 or more when other tests hold descriptors.)
    let body = format!(
        "#!/bin/sh\necho {} > /proc/self/fd/$4\nexec sleep 30\n",
        decoy.display()
    );
    let exe = write_script(scratch.path(), "liar.sh", &body);
    let err = Pool::builder()
        .workers(1)
        .worker_exe(&exe)
        .build()
        .expect_err("procpool never connects to a path outside its own directory");
    let text = err.to_string();
    assert!(
        text.contains("outside procpool's private directory"),
        "{text}"
    );
    let gone = wait_until(TEARDOWN_DEADLINE, || {
        children_of_this_process()
            .iter()
            .all(|(_, c)| c != "sleep" && c != "liar.sh")
    });
    assert!(gone, "the fake worker is killed and reaped");
}

#[test]
fn the_private_directory_is_0700_even_under_umask_000() {
    let sandbox = Sandbox::new();
    let mut cmd = Command::new(EXE);
    cmd.args(["--workers", "2", "sleep", "200", "--ms", "20"])
        .env("TMPDIR", sandbox.tmpdir())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: umask is async-signal-safe and touches nothing but this child's mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let found = wait_until(Duration::from_secs(30), || {
        dir_entries(sandbox.tmpdir())
            .iter()
            .any(|n| n.to_string_lossy().starts_with("procpool-"))
    });
    let entries = dir_entries(sandbox.tmpdir());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(found, "no private directory appeared: {entries:?}");
        assert_eq!(entries.len(), 1, "{entries:?}");
        let dir = sandbox.tmpdir().join(entries.first().unwrap());
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o7777, 0o700, "{}", dir.display());
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        if nix::unistd::geteuid().is_root() {
            // Another user cannot even look inside.
            let mut ls = Command::new("ls");
            ls.arg(&dir).stdout(Stdio::null()).stderr(Stdio::null());
            // SAFETY: setgid/setuid are plain system calls, async-signal-safe.
            unsafe {
                ls.pre_exec(|| {
                    nix::unistd::setgid(nix::unistd::Gid::from_raw(65534))?;
                    nix::unistd::setuid(nix::unistd::Uid::from_raw(65534))?;
                    Ok(())
                });
            }
            let mut ls = ls.spawn().unwrap();
            let status = wait_child(&mut ls, Duration::from_secs(10)).expect("ls ends");
            assert!(
                !status.success(),
                "user nobody could list {}",
                dir.display()
            );
        }
    }));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Runs the hidden worker entry by hand, as procpool would but with `timeout_ms` and
/// `parent`, its report pipe a real inherited descriptor and `TMPDIR` set to `tmpdir`;
/// waits (within 20 s) for it to give up. Returns its exit code, its stderr and what it
/// reported on the pipe.
fn worker_entry_by_hand(
    tmpdir: &std::path::Path,
    timeout_ms: &str,
    parent: u32,
) -> (Option<i32>, String, String) {
    let (mut report, report_end) = std::io::pipe().unwrap();
    let fd = {
        use std::os::fd::AsRawFd;
        report_end.as_raw_fd()
    };
    let mut cmd = Command::new(EXE);
    cmd.args([
        "__procpool_worker",
        &fd.to_string(),
        "0",
        &fd.to_string(),
        // The inputs socket: any open descriptor will do, the worker gives up before use.
        &fd.to_string(),
        timeout_ms,
        &parent.to_string(),
        "-",
    ])
    .env("TMPDIR", tmpdir)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // SAFETY: fcntl is async-signal-safe; it clears close-on-exec on the pipe's write end
    // in the child only, so the worker entry gets a real descriptor to report on.
    unsafe {
        cmd.pre_exec(move || {
            let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(report_end);
    let status = wait_child(&mut child, Duration::from_secs(20)).expect("gives up on its own");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut reported = String::new();
    report.read_to_string(&mut reported).unwrap();
    (status.code(), stderr, reported)
}

#[test]
fn the_hidden_worker_entry_started_by_hand_gives_up_and_deletes_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    // A private directory, as procpool's is: a worker binds in nothing else.
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let keep = scratch.path().join("precious");
    std::fs::write(&keep, b"data").unwrap();
    // Its parent: this test, as procpool would be.
    let (code, stderr, reported) = worker_entry_by_hand(scratch.path(), "500", std::process::id());
    assert_eq!(code, Some(1), "{stderr}");
    // It told its parent: it started, where its socket was, and that it gave up when its
    // wait timed out (ETIMEDOUT).
    let lines: Vec<&str> = reported.lines().collect();
    assert_eq!(lines.len(), 3, "{reported}");
    assert_eq!(lines[0], "started", "{reported}");
    assert!(lines[1].ends_with("/socket"), "{reported}");
    assert_eq!(
        lines[2],
        format!("gave-up {}", libc::ETIMEDOUT),
        "{reported}"
    );
    let left = dir_entries(scratch.path());
    assert_eq!(
        left.into_iter().collect::<Vec<_>>(),
        vec![std::ffi::OsString::from("precious")],
        "it removed its own socket, and only that"
    );
}

#[test]
fn inflight_beyond_the_channel_buffer_is_refused_and_the_most_allowed_never_deadlocks() {
    let refused = Procpool::new(&[
        "--workers",
        "2",
        "--dispatch",
        "channel",
        "--inflight",
        "100000",
        "--chunk-size",
        "1",
        "squares",
        "1e4",
    ])
    .run();
    refused.assert_code(EXIT_USAGE);
    let line = refused.one_line_error();
    assert!(line.contains("--inflight 100000"), "{line}");
    let most: String = line
        .split("use at most ")
        .nth(1)
        .expect("names the limit")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    // The largest allowed depth with one-element chunks: the case that used to deadlock,
    // with the parent sending chunks while the worker sent replies.
    let out = Procpool::new(&[
        "--workers",
        "2",
        "--dispatch",
        "channel",
        "--inflight",
        &most,
        "--chunk-size",
        "1",
        "squares",
        "2e4",
        "--json",
    ])
    .deadline(Duration::from_secs(60))
    .run();
    out.assert_code(0);
    assert_eq!(out.json()["verified"], true);
}

#[test]
fn a_reader_that_never_drains_stderr_does_not_stall_the_pool() {
    // A pipe whose buffer is already full: any write to it blocks until someone reads.
    let (mut reader, writer) = std::io::pipe().unwrap();
    let set_nonblocking = |on: bool| {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = if on {
            OFlag::O_NONBLOCK
        } else {
            OFlag::empty()
        };
        fcntl(&writer, FcntlArg::F_SETFL(flags)).unwrap();
    };
    set_nonblocking(true);
    let junk = [b'x'; 4096];
    while (&writer).write(&junk).is_ok() {}
    set_nonblocking(false);

    let sandbox = Sandbox::new();
    let stdout = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(EXE)
        .args([
            "--workers",
            "2",
            "squares",
            "1e5",
            "--chunk-size",
            "1000",
            "--inject",
            "kill@3",
            "--json",
        ])
        .env("TMPDIR", sandbox.tmpdir())
        .stdout(stdout.reopen().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    // The report arrives although the line about the dead worker cannot be written.
    let report = || -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(stdout.path()).ok()?).ok()
    };
    let arrived = wait_until(Duration::from_secs(60), || report().is_some());
    // Now drain stderr, so procpool can write its queued lines and exit.
    let drain = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = reader.read_to_end(&mut all);
        all
    });
    let status = wait_child(&mut child, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&drain.join().unwrap()).into_owned();
    assert!(arrived, "no report while stderr was full; stderr: {stderr}");
    let report = report().unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["restarts"], 1);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// A directory under `scratch` whose path (100 bytes or more) leaves no room for a
/// worker's socket path.
fn too_long_for_a_socket(scratch: &Path) -> PathBuf {
    let mut long = scratch.to_path_buf();
    while long.as_os_str().len() < 100 {
        long.push("deeper");
    }
    std::fs::create_dir_all(&long).unwrap();
    long
}

#[test]
fn a_tmpdir_too_long_for_a_socket_path_is_refused_up_front() {
    let scratch = tempfile::tempdir().unwrap();
    let long = too_long_for_a_socket(scratch.path());
    let out = Procpool::new(&["--workers", "1", "squares", "10"])
        .env("TMPDIR", &long)
        .run();
    out.assert_code(EXIT_USAGE);
    let line = out.one_line_error();
    assert!(
        line.contains("TMPDIR") && line.contains("107 bytes"),
        "{line}"
    );
    assert!(dir_entries(&long).is_empty(), "nothing left in TMPDIR");
    assert_no_tagged_process(&out.tag, &out.args);
}

#[test]
fn a_worker_whose_parent_is_not_the_one_it_was_told_gives_up_at_once() {
    // Started by someone other than procpool (or re-parented because procpool died before
    // the worker armed its death signal): it must not wait for a connection at all.
    let scratch = tempfile::tempdir().unwrap();
    let (code, stderr, reported) = worker_entry_by_hand(scratch.path(), "60000", 1);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(reported.contains("(pid 1) is gone"), "{reported}");
    assert!(dir_entries(scratch.path()).is_empty(), "it made no socket");
}

/// A worker executable whose report lines reach procpool only once `dir/gate` exists: the
/// real worker writes them into a FIFO, which a helper copies to the report pipe after the
/// gate opens; until then the worker waits in accept() on its `procpool-accept` thread.
/// Start N (1, 2, … in the order starts take a ticket) writes its pid into `dir/pid.N`.
fn gated_wrapper(dir: &Path) -> PathBuf {
    let body = format!(
        r#"#!/bin/bash
n=1
while ! mkdir "{dir}/start.$n" 2>/dev/null; do n=$((n+1)); done
echo $$ > "{dir}/pid.$n"
fifo="{dir}/report.$n"
mkfifo "$fifo"
report=$4
# The copier opens the FIFO before the worker does, so it sees EOF when the worker ends;
# it holds none of the worker's output pipes, and waits for the gate 30 s at most.
(
    exec <"$fifo" >/dev/null 2>&1
    for i in $(seq 3000); do [ -e "{dir}/gate" ] && break; sleep 0.01; done
    exec cat >&$report
) &
exec {{held}}<>"$fifo"
eval "exec $report>&-"
exec "{exe}" "$1" "$2" "$3" "$held" "${{@:5}}"
"#,
        dir = dir.display(),
        exe = EXE,
    );
    write_script(dir, "gated.sh", &body)
}

/// The thread of `pid` named `procpool-accept`, once it waits in accept().
fn accept_thread_waiting(pid: u32) -> Option<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if comm.trim_end() != "procpool-accept" {
            return None;
        }
        let syscall = std::fs::read_to_string(task.path().join("syscall")).ok()?;
        let number: i64 = syscall.split_whitespace().next()?.parse().ok()?;
        [libc::SYS_accept, libc::SYS_accept4]
            .contains(&number)
            .then(|| task.file_name().to_str()?.parse().ok())
            .flatten()
    })
}

/// Sends `signal` to the starting worker's accept thread while it waits in accept(), then
/// lets procpool connect: the start goes on as if nothing happened.
fn a_signal_at_a_starting_workers_accept_thread_is_harmless(signal: Signal) {
    let scratch = tempfile::tempdir().unwrap();
    let exe = gated_wrapper(scratch.path());
    let dir = scratch.path().to_path_buf();
    let aimer = std::thread::spawn(move || -> Result<u32, String> {
        let mut aimed = Err("no worker started".to_string());
        let mut pid = 0;
        let found = wait_until(Duration::from_secs(30), || {
            pid = std::fs::read_to_string(dir.join("pid.1"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            pid != 0 && accept_thread_waiting(pid).is_some()
        });
        if let (true, Some(tid)) = (found, accept_thread_waiting(pid)) {
            // SAFETY: tgkill only sends a signal to the thread `tid` of process `pid`, a
            // worker this test started; no memory is passed.
            let sent = unsafe { libc::syscall(libc::SYS_tgkill, pid as i32, tid, signal as i32) };
            aimed = if sent == 0 {
                Ok(pid)
            } else {
                Err(format!("tgkill: {}", std::io::Error::last_os_error()))
            };
        } else {
            aimed = aimed.map_err(|e| format!("{e}, or its accept thread never waited"));
        }
        // Let the signal do what it does before procpool hears where to connect.
        std::thread::sleep(Duration::from_millis(200));
        std::fs::write(dir.join("gate"), b"").unwrap();
        aimed
    });
    let built = Pool::builder().workers(1).worker_exe(&exe).build();
    let aimed = aimer.join().unwrap();
    let pool = built.unwrap_or_else(|e| panic!("the start failed: {e}"));
    let pid = aimed.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pool.pids(), vec![pid], "the signalled worker is the pool's");
    let stats = squares_then_shut_down(pool);
    assert_eq!(stats.restarts, 0, "{:?}", stats.deaths);
}

/// Runs `squares 10000` on `pool` and checks the results, then shuts the pool down and
/// checks that its workers are reaped. The job's stats.
fn squares_then_shut_down(mut pool: Pool) -> procpool::JobStats {
    let run = pool.run(&Squares, 10_000).expect("the job runs");
    assert_squares(run.results(), 10_000);
    let stats = run.stats().clone();
    drop(run);
    let pids = pool.pids();
    pool.shutdown();
    assert_reaped(&pids);
    stats
}

#[test]
fn a_sigsegv_at_a_starting_workers_accept_thread_is_harmless() {
    a_signal_at_a_starting_workers_accept_thread_is_harmless(Signal::SIGSEGV);
}

#[test]
fn a_sigbus_at_a_starting_workers_accept_thread_is_harmless() {
    a_signal_at_a_starting_workers_accept_thread_is_harmless(Signal::SIGBUS);
}

#[test]
fn a_worker_that_gives_up_its_handshake_is_replaced_and_says_why() {
    let scratch = tempfile::tempdir().unwrap();
    // The first start says it started, then that its accept() was interrupted (EINTR), and
    // exits; the others are the real worker.
    let body = format!(
        r#"#!/bin/sh
n=1
while ! mkdir "{tickets}/start.$n" 2>/dev/null; do n=$((n+1)); done
if [ "$n" = 1 ]; then printf 'started\ngave-up {eintr}\n' > /proc/self/fd/$4; exit 1; fi
exec "{exe}" "$@"
"#,
        tickets = scratch.path().display(),
        eintr = libc::EINTR,
        exe = EXE,
    );
    let exe = write_script(scratch.path(), "quitter.sh", &body);
    let pool = Pool::builder()
        .workers(1)
        .worker_exe(&exe)
        .build()
        .expect("a start that gave up is tried again");
    let stats = squares_then_shut_down(pool);
    assert_eq!(stats.restarts, 1, "{:?}", stats.deaths);
    assert_eq!(
        stats.deaths[0].cause,
        "gave up its handshake: Interrupted system call"
    );
}

#[test]
fn the_init_hint_is_given_only_for_a_program_that_never_reached_init() {
    let scratch = tempfile::tempdir().unwrap();
    let start = |name: &str, body: &str| {
        let exe = write_script(scratch.path(), name, &format!("#!/bin/sh\n{body}\n"));
        Pool::builder()
            .workers(1)
            .worker_exe(&exe)
            .build()
            .expect_err("the worker exits")
            .to_string()
    };
    let never = start("plain.sh", "exit 3");
    assert!(never.contains("exited with status 3"), "{never}");
    assert!(never.contains("call procpool::init()"), "{never}");
    // This one ran procpool's worker entry (it said so first), then exited.
    let reached = start("reached.sh", "echo started > /proc/self/fd/$4\nexit 3");
    assert!(
        reached.contains("exited with status 3 before it connected"),
        "{reached}"
    );
    assert!(!reached.contains("init()"), "{reached}");
}

#[test]
fn a_tmpdir_anyone_can_write_without_the_sticky_bit_is_refused_up_front() {
    let scratch = tempfile::tempdir().unwrap();
    let open = scratch.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Procpool::new(&["--workers", "1", "squares", "10"])
        .env("TMPDIR", &open)
        .run();
    out.assert_code(EXIT_USAGE);
    let line = out.one_line_error();
    assert!(
        line.contains(&format!("TMPDIR ({})", open.display())) && line.contains("sticky bit"),
        "{line}"
    );
    assert!(dir_entries(&open).is_empty(), "nothing made in TMPDIR");
    assert_no_tagged_process(&out.tag, &out.args);
    // With the sticky bit, as /tmp has it, the same directory is fine.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = Procpool::new(&["--workers", "1", "squares", "10"])
        .env("TMPDIR", &open)
        .run();
    out.assert_code(0);
    assert!(dir_entries(&open).is_empty(), "nothing left in TMPDIR");
}

/// Runs a one-worker job whose worker hangs on chunk 0; once it hangs there, stops
/// procpool, calls `meddle` with the private directory, kills the worker and lets
/// procpool go on: the replacement starts in whatever `meddle` left under the private
/// directory's name. The job must fail, and leave no process behind; returns the private
/// directory and the one line (after the notice of the worker killed) that says why.
fn replace_after(meddle: impl FnOnce(&Path, &Path)) -> (PathBuf, String) {
    let sandbox = Sandbox::new();
    let mut private = PathBuf::new();
    // The private directory is where a spawned worker's handshake happens.
    let args = [
        "--start",
        "spawn",
        "--workers",
        "1",
        "--inject",
        "hang@0",
        "squares",
        "1000",
    ];
    let out = sandbox.command(&args).run_while(|pid, tag| {
        // The worker sleeps in chunk 0 once its handshake is done.
        let mut worker = None;
        let hung = wait_until(Duration::from_secs(30), || {
            worker = common::tagged_workers(tag).first().copied();
            worker.is_some_and(|p| {
                std::fs::read_to_string(format!("/proc/{p}/syscall")).is_ok_and(|s| {
                    let number = s.split_whitespace().next().and_then(|n| n.parse().ok());
                    number.is_some_and(|n| {
                        [libc::SYS_clock_nanosleep, libc::SYS_nanosleep].contains(&n)
                    })
                })
            })
        });
        assert!(hung, "the worker never reached chunk 0");
        common::signal(pid, Signal::SIGSTOP);
        let entries = dir_entries(sandbox.tmpdir());
        let found = entries
            .iter()
            .find(|n| n.to_string_lossy().starts_with("procpool-"))
            .map(|n| sandbox.tmpdir().join(n));
        let meddled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            private = found.unwrap_or_else(|| panic!("no private directory: {entries:?}"));
            meddle(&private, sandbox.tmpdir())
        }));
        common::kill(worker.unwrap());
        common::signal(pid, Signal::SIGCONT);
        if let Err(panic) = meddled {
            std::panic::resume_unwind(panic);
        }
    });
    out.assert_code(1);
    assert_no_tagged_process(&out.tag, &out.args);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines.len() == 2
            && lines[0]
                .ends_with("killed by SIGKILL while running chunk 0; starting a replacement"),
        "procpool {}: stderr:\n{}",
        out.args,
        out.stderr
    );
    (private, lines[1].to_string())
}

#[test]
fn a_directory_put_in_place_of_the_private_one_is_refused_by_the_next_worker() {
    // What another user could do in a TMPDIR without the sticky bit: move procpool's
    // directory away and put one of their own (0700, as procpool's) under its name.
    let (private, line) = replace_after(|dir, tmpdir| {
        std::fs::rename(dir, tmpdir.join("moved")).unwrap();
        std::fs::create_dir(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    });
    assert!(
        line.contains(&format!("refused to bind in {}", private.display()))
            && line.contains("another directory was put in its place"),
        "{line}"
    );
    assert!(
        dir_entries(&private).is_empty(),
        "the replacement bound nothing in the impostor: {:?}",
        dir_entries(&private)
    );
}

#[test]
fn a_removed_private_directory_is_named_in_one_line() {
    let (private, line) = replace_after(|dir, _| std::fs::remove_dir_all(dir).unwrap());
    assert!(
        line.contains(&format!(
            "cannot create its handshake socket in {}: No such file or directory",
            private.display()
        )),
        "{line}"
    );
    assert!(!line.contains("init()"), "{line}");
}

#[test]
fn a_worker_whose_tmpdir_is_too_long_for_a_socket_says_so() {
    let scratch = tempfile::tempdir().unwrap();
    let long = too_long_for_a_socket(scratch.path());
    std::fs::set_permissions(&long, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, stderr, reported) = worker_entry_by_hand(&long, "500", std::process::id());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        reported.contains(&format!(
            "failed cannot create its handshake socket in {}: a socket path there would be",
            long.display()
        )),
        "{reported}"
    );
    assert!(dir_entries(&long).is_empty(), "it made no socket");
}

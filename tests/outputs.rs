//! Files the user names (`--output`, `--trace`, `--timeline`, a sweep's `--plot`) are never
//! clobbered: a device or FIFO is written in place and stays what it was, a wrong output
//! never replaces an older file, two outputs naming one file (or procpool itself) are
//! refused, and a path that cannot be written is refused before anything starts.

mod common;

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{EXE, EXIT_FAILED, EXIT_OK, EXIT_USAGE, Procpool, Sandbox};

/// How long a refusal may take: it happens before any worker starts, while the jobs these
/// tests give would take far longer than this if they ran.
const REFUSED_WITHIN: Duration = Duration::from_secs(20);

/// A job of 50 s of sleeping chunks: only a refusal ends it within [`REFUSED_WITHIN`].
const LONG_JOB: [&str; 6] = ["--workers", "2", "sleep", "1000", "--ms", "100"];

/// Runs `args` and asserts it is refused at once: exit 2, one line holding each of
/// `expected`, and nothing left behind.
fn assert_refused_up_front(args: &[&str], expected: &[&str]) {
    let sandbox = Sandbox::new();
    let out = sandbox.command(args).deadline(REFUSED_WITHIN).run();
    out.assert_code(EXIT_USAGE);
    let line = out.one_line_error();
    for part in expected {
        assert!(
            line.contains(part),
            "expected {part:?} in: {}",
            &line[line.len().saturating_sub(300)..]
        );
    }
    sandbox.assert_nothing_left(&out);
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// The names in `dir` other than `keep`: what a run left beside its output.
fn left_beside(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list the directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| !keep.contains(&name.as_str()))
        .collect()
}

/// A private character device like /dev/null (1, 3), or `None` (with the reason printed)
/// where this process may not make device nodes.
fn private_null(dir: &Path) -> Option<PathBuf> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let path = dir.join("null");
    match mknod(
        &path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    ) {
        Ok(()) => Some(path),
        Err(e) => {
            println!("skipped: cannot make a device node here ({e}): run as root");
            None
        }
    }
}

fn assert_still_null(path: &Path) {
    let meta = std::fs::metadata(path).expect("the device node is still there");
    assert!(
        meta.file_type().is_char_device(),
        "{} was replaced by a {:?}",
        path.display(),
        meta.file_type()
    );
    assert_eq!(
        meta.rdev(),
        nix::sys::stat::makedev(1, 3),
        "the same device"
    );
}

#[test]
fn a_device_at_trace_and_timeline_is_written_in_place_and_stays_a_device() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(null) = private_null(dir.path()) else {
        return;
    };
    let sandbox = Sandbox::new();
    let n = path_str(&null);
    let out = sandbox.run(&[
        "--workers",
        "2",
        "squares",
        "10000",
        "--trace",
        n,
        "--timeline",
        n,
    ]);
    out.assert_code(EXIT_OK);
    sandbox.assert_nothing_left(&out);
    assert_still_null(&null);
    assert_eq!(left_beside(dir.path(), &["null"]), Vec::<String>::new());
}

/// Reads a FIFO opened before procpool starts until procpool has ended and the FIFO is
/// drained, with a deadline: what a waiting reader receives.
fn read_fifo(path: &Path) -> (std::thread::JoinHandle<Vec<u8>>, Arc<AtomicBool>) {
    let mut fifo = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open the FIFO for reading");
    let ended = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&ended);
    let reader = std::thread::spawn(move || {
        let began = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while began.elapsed() < common::RUN_DEADLINE {
            let ended = done.load(Ordering::SeqCst);
            match fifo.read(&mut buf) {
                Ok(0) if ended || !got.is_empty() => break,
                Ok(k) if k > 0 => got.extend_from_slice(&buf[..k]),
                Ok(_) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("reading the FIFO: {e}"),
            }
        }
        got
    });
    (reader, ended)
}

#[test]
fn a_fifo_at_timeline_is_written_in_place_and_its_reader_gets_the_picture() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let (reader, ended) = read_fifo(&fifo);
    let sandbox = Sandbox::new();
    let out = sandbox.run(&[
        "--workers",
        "2",
        "squares",
        "10000",
        "--timeline",
        path_str(&fifo),
    ]);
    ended.store(true, Ordering::SeqCst);
    let got = reader.join().expect("the reader thread");
    out.assert_code(EXIT_OK);
    sandbox.assert_nothing_left(&out);
    let meta = std::fs::metadata(&fifo).expect("the FIFO is still there");
    assert!(meta.file_type().is_fifo(), "the FIFO was replaced");
    let svg = String::from_utf8_lossy(&got);
    assert!(
        svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
        "the reader got the whole picture, got {} bytes: {}",
        got.len(),
        &svg[..svg.len().min(200)]
    );
    assert_eq!(left_beside(dir.path(), &["fifo"]), Vec::<String>::new());
}

#[test]
fn a_fifo_with_no_reader_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let f = path_str(&fifo);
    for flag in ["--output", "--trace"] {
        assert_refused_up_front(
            &[&LONG_JOB[..], &[flag, f]].concat(),
            &[&format!("{flag} {f}: "), "a FIFO with no reader"],
        );
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }
}

#[test]
fn a_failed_verification_leaves_the_older_output_as_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("x.bin");
    std::fs::write(&file, b"an older file").expect("write the older file");
    let sandbox = Sandbox::new();
    let out = sandbox.run(&[
        "--workers",
        "2",
        "squares",
        "1e6",
        "--output",
        path_str(&file),
        "--inject",
        "corrupt@1",
    ]);
    out.assert_code(EXIT_FAILED);
    assert!(out.stderr.contains("differs"), "{}", out.stderr);
    assert_eq!(
        std::fs::read(&file).expect("the older file"),
        b"an older file",
        "a wrong output must not replace the older file"
    );
    assert!(
        out.stderr
            .contains(&format!("{} was not written", file.display())),
        "{}",
        out.stderr
    );
    assert_eq!(left_beside(dir.path(), &["x.bin"]), Vec::<String>::new());
    sandbox.assert_nothing_left(&out);
}

/// Undoes `chattr +i` on drop, so the temporary directory can be removed.
struct Immutable<'a>(&'a Path);

impl Immutable<'_> {
    fn set(dir: &Path) -> Option<Immutable<'_>> {
        let done = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .stderr(std::process::Stdio::piped())
            .output();
        match done {
            Ok(o) if o.status.success() => Some(Immutable(dir)),
            Ok(o) => {
                println!(
                    "skipped: cannot make a directory immutable here: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("skipped: no chattr here: {e}");
                None
            }
        }
    }
}

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(self.0)
            .status();
    }
}

/// A file that may be written in a directory that may not be changed (immutable even for
/// root): neither an unnamed nor a temporary file can be made beside it, so procpool
/// refuses rather than truncating the older file.
#[test]
fn an_output_whose_directory_takes_no_new_file_is_refused_and_never_truncated() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("x.bin");
    std::fs::write(&file, b"an older file").expect("write the older file");
    let Some(_immutable) = Immutable::set(dir.path()) else {
        return;
    };
    let f = path_str(&file);
    assert_refused_up_front(
        &[&LONG_JOB[..], &["--output", f]].concat(),
        &[&format!("--output {f}: "), "never truncates"],
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"an older file");
}

#[test]
fn two_outputs_naming_one_file_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let x = dir.path().join("x");
    let x_again = dir.path().join(".").join("x");
    let (x, x_again) = (path_str(&x), path_str(&x_again));
    let cases: [&[&str]; 3] = [
        &["--output", x, "--trace", x],
        &["--trace", x, "--timeline", x_again],
        &["--output", x, "--timeline", x_again],
    ];
    for flags in cases {
        let sandbox = Sandbox::new();
        let mut args = vec!["--workers", "2", "squares", "10000"];
        args.extend_from_slice(flags);
        let out = sandbox.run(&args);
        out.assert_code(EXIT_USAGE);
        let line = out.one_line_error();
        assert!(
            line.contains(flags[0]) && line.contains(flags[2]) && line.contains("same file"),
            "{line}"
        );
        sandbox.assert_nothing_left(&out);
        assert_eq!(left_beside(dir.path(), &[]), Vec::<String>::new());
    }
    // An existing file under two names (a hard link) is one file too.
    std::fs::write(dir.path().join("x"), b"older").unwrap();
    std::fs::hard_link(dir.path().join("x"), dir.path().join("y")).unwrap();
    let y = dir.path().join("y");
    let out = Sandbox::new().run(&["squares", "1000", "--trace", x, "--timeline", path_str(&y)]);
    out.assert_code(EXIT_USAGE);
    assert_eq!(std::fs::read(&y).unwrap(), b"older");
}

/// procpool's own executable, under another name (a hard link beside it, so that a run
/// that wrongly replaced it would only replace the link).
#[test]
fn an_output_naming_procpool_itself_is_refused() {
    let dir = tempfile::tempdir_in(Path::new(EXE).parent().expect("the target directory"))
        .expect("temp dir beside the executable");
    let link = dir.path().join("procpool-link");
    std::fs::hard_link(EXE, &link).expect("link the executable");
    let l = path_str(&link);
    for flag in ["--output", "--trace", "--timeline"] {
        let sandbox = Sandbox::new();
        let out = sandbox.run(&["--workers", "2", "squares", "10000", flag, l]);
        out.assert_code(EXIT_USAGE);
        let line = out.one_line_error();
        assert!(
            line.contains(&format!("{flag} {l}")) && line.contains("own executable"),
            "{line}"
        );
        sandbox.assert_nothing_left(&out);
        let meta = std::fs::metadata(&link).unwrap();
        assert_eq!(
            meta.ino(),
            std::fs::metadata(EXE).unwrap().ino(),
            "not replaced"
        );
    }
}

#[test]
fn an_output_name_too_long_is_refused_before_the_pool_starts() {
    let name = "a".repeat(5000);
    assert_refused_up_front(
        &[&LONG_JOB[..], &["--output", &name]].concat(),
        &["procpool: --output aaaa", "File name too long"],
    );
}

#[test]
fn a_sweep_plot_in_a_missing_directory_is_refused_before_the_sweep() {
    // 20 s for the one-worker run alone if it ran.
    let sweep = ["sweep", "--workers", "1,2", "sleep", "200", "--ms", "100"];
    assert_refused_up_front(
        &[&sweep[..], &["--plot", "/nonexistent/p.svg"]].concat(),
        &["--plot /nonexistent/p.svg: ", "No such file"],
    );
}

#[test]
fn a_report_that_cannot_be_written_says_what_it_was_writing() {
    let out = Procpool::wrapped(
        &["sh", "-c", "exec \"$0\" \"$@\" > /dev/full"],
        &["--workers", "2", "squares", "1000"],
    )
    .run();
    out.assert_code(EXIT_FAILED);
    let line = out.one_line_error();
    assert!(
        line.contains("cannot write the report to standard output")
            && line.contains("No space left on device"),
        "{line}"
    );
}

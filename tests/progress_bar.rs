//! On a terminal, a job longer than a second shows a progress bar whose rate is the job's
//! true rate: elements done over time elapsed, in elements/s with a unit. (The bar appears a
//! second in and jumps to the current position; a smoothed estimate read that jump as
//! billions of elements a second.)
//!
//! procpool runs under a pseudo-terminal made by util-linux `script`; where it is missing
//! the test fails saying so, as the other terminal test does.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{EXE, TAG_VAR, kill_tagged, unique_tag, wait_until};

/// How long the run may take before it is killed (it needs about 2 s).
const DEADLINE: Duration = Duration::from_secs(60);

fn has_command(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// Every rate the bar showed, in elements per second: the number and unit before
/// `elements/s`.
fn shown_rates(screen: &str) -> Vec<f64> {
    screen
        .split("elements/s")
        .collect::<Vec<_>>()
        .split_last()
        .map(|(_, before)| before.to_vec())
        .unwrap_or_default()
        .iter()
        .filter_map(|chunk| {
            let mut words = chunk.rsplit([' ', ',']).filter(|w| !w.is_empty());
            let first = words.next()?;
            let (number, scale) = match first {
                "k" => (words.next()?, 1e3),
                "M" => (words.next()?, 1e6),
                "G" => (words.next()?, 1e9),
                number => (number, 1.0),
            };
            Some(number.parse::<f64>().ok()? * scale)
        })
        .collect()
}

#[test]
fn the_bar_shows_the_true_rate_on_a_terminal() {
    // Without a terminal to test with, fail rather than pass having checked nothing (as
    // tests/lab.rs does).
    assert!(
        has_command("script"),
        "this test needs `script` from util-linux (Debian: bsdutils) to give procpool a terminal"
    );
    // 400 elements of 10 ms on 2 workers: about 2 s, 200 elements/s; sleep's baseline is
    // known without running it.
    let n = 400.0;
    let command = format!("'{EXE}' --workers 2 --chunk-size 10 sleep 400 --ms 10");
    let tag = unique_tag();
    let mut screen = tempfile::tempfile().expect("temp file");
    let began = Instant::now();
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env(TAG_VAR, &tag)
        .env("TERM", "xterm")
        .env("COLUMNS", "200")
        .stdin(Stdio::null())
        .stdout(screen.try_clone().expect("dup"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start script");
    let finished = wait_until(DEADLINE, || {
        child.try_wait().map_or(true, |status| status.is_some())
    });
    let wall = began.elapsed().as_secs_f64();
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
        kill_tagged(&tag);
        panic!("procpool under script did not finish within {DEADLINE:?}; killed it");
    }
    let status = child.wait().expect("reap script");
    kill_tagged(&tag);
    let mut raw = Vec::new();
    screen.seek(SeekFrom::Start(0)).expect("seek");
    screen.read_to_end(&mut raw).expect("read the screen");
    let screen = String::from_utf8_lossy(&raw);
    assert!(status.success(), "{status}\n{screen}");
    assert!(screen.contains("procpool: sleep n=400"), "{screen}");

    let rates = shown_rates(&screen);
    assert!(!rates.is_empty(), "no bar with a rate was drawn:\n{screen}");
    // The true rate: n over the run's wall time (a little more, as the wall includes
    // starting procpool and script). Every rate shown is an average since the job started,
    // so within a small factor of it: never billions a second.
    let truth = n / wall;
    for rate in &rates {
        assert!(
            (truth / 3.0..truth * 3.0).contains(rate),
            "the bar showed {rate} elements/s; the run did {truth:.0} elements/s\n{screen}"
        );
    }
    assert!(screen.contains(" elements/s, ETA "), "{screen}");
    assert!(
        !screen.contains("ETA 0s") || screen.contains("100%"),
        "{screen}"
    );
}

#[test]
fn rates_are_read_off_the_screen() {
    let screen = "x 45% 180/400 elements, 179 elements/s, ETA 2s\r\u{1b}[2K 9.50 M elements/s, \
                  273 G elements/s";
    assert_eq!(shown_rates(screen), vec![179.0, 9.5e6, 273e9]);
}

//! What the command shows while a pool works: a progress bar on a terminal for jobs longer
//! than a second, and one line per lost worker, written so that the pool never waits on
//! stderr (see `notice.rs`).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use procpool::{Event, Observer};

/// A progress bar appears only for jobs running longer than this.
const BAR_AFTER: Duration = Duration::from_secs(1);

/// The command's [`Observer`].
pub(crate) struct Terminal {
    /// A bar may be drawn: asked for, and stderr is a terminal (looked up once).
    bar_wanted: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    began: Option<Instant>,
    bar: Option<indicatif::ProgressBar>,
}

impl Terminal {
    /// Lines for lost workers always; a bar too when `bar` and stderr is a terminal.
    pub(crate) fn new(bar: bool) -> Self {
        Terminal {
            bar_wanted: bar && std::io::stderr().is_terminal(),
            state: Mutex::new(State::default()),
        }
    }
}

impl Observer for Terminal {
    fn event(&self, event: &Event<'_>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match *event {
            Event::JobStarted { .. } => {
                state.began = Some(Instant::now());
                state.bar = None;
            }
            Event::Progress { done, n } => match (&state.bar, state.began) {
                (Some(bar), _) => bar.set_position(done),
                (None, Some(began)) if self.bar_wanted && began.elapsed() >= BAR_AFTER => {
                    state.bar = Some(bar(done, n, began.elapsed()));
                }
                _ => {}
            },
            Event::WorkerLost { what, .. } => {
                let line = format!("procpool: {what}; starting a replacement");
                match &state.bar {
                    Some(bar) => bar.println(line),
                    None => crate::notice::notice(line),
                }
            }
            Event::JobEnded { completed } => {
                if let Some(bar) = state.bar.take() {
                    if completed {
                        bar.finish_and_clear();
                    } else {
                        bar.abandon();
                    }
                }
            }
            _ => {}
        }
    }
}

/// A bar for a job of `n` elements that has done `done` in `elapsed` since it started.
///
/// The rate and the ETA are the job's average since it started (elements done over time
/// elapsed), not indicatif's smoothed estimate: the bar appears a second into the job and
/// its first position update is a jump from 0 to `done`, which indicatif would read as
/// billions of elements a second.
fn bar(done: u64, n: u64, elapsed: Duration) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(
        "{bar:40} {percent:>3}% {human_pos}/{human_len} elements, {rate}, ETA {true_eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .with_key(
        "rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&rate(average_rate(state)));
        },
    )
    .with_key(
        "true_eta",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let left = state.len().unwrap_or(0).saturating_sub(state.pos());
            let _ = w.write_str(&eta(left, average_rate(state)));
        },
    );
    let bar = indicatif::ProgressBar::new(n)
        .with_style(style)
        .with_elapsed(elapsed)
        .with_position(done);
    bar.reset_eta();
    bar.tick();
    bar
}

/// Elements per second since the job started (the bar's elapsed time is the job's).
fn average_rate(state: &indicatif::ProgressState) -> f64 {
    let secs = state.elapsed().as_secs_f64();
    if secs > 0.0 {
        state.pos() as f64 / secs
    } else {
        0.0
    }
}

/// A rate in elements per second with a unit: `950 elements/s`, `9.5 M elements/s`.
fn rate(per_s: f64) -> String {
    let (value, unit) = match per_s {
        x if !x.is_finite() || x < 0.0 => return "? elements/s".to_string(),
        x if x >= 0.9995e9 => (x / 1e9, "G "),
        x if x >= 0.9995e6 => (x / 1e6, "M "),
        x if x >= 0.9995e3 => (x / 1e3, "k "),
        x => (x, ""),
    };
    let digits = if unit.is_empty() || value >= 99.95 {
        0
    } else if value >= 9.995 {
        1
    } else {
        2
    };
    format!("{value:.digits$} {unit}elements/s")
}

/// The time left for `left` elements at `per_s`: `12s`, `3m 05s`, `1h 02m`, or `?`.
fn eta(left: u64, per_s: f64) -> String {
    if left == 0 {
        return "0s".to_string();
    }
    if per_s <= 0.0 || !per_s.is_finite() {
        return "?".to_string();
    }
    let secs = (left as f64 / per_s).ceil().min(1e9) as u64;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_in_elements_per_second_with_units() {
        assert_eq!(rate(0.0), "0 elements/s");
        assert_eq!(rate(950.0), "950 elements/s");
        assert_eq!(rate(9_500.0), "9.50 k elements/s");
        assert_eq!(rate(9_500_000.0), "9.50 M elements/s");
        assert_eq!(rate(95_400_000.0), "95.4 M elements/s");
        assert_eq!(rate(273_000_000_000.0), "273 G elements/s");
        assert_eq!(rate(f64::NAN), "? elements/s");
    }

    #[test]
    fn etas_read_as_durations() {
        assert_eq!(eta(0, 0.0), "0s");
        assert_eq!(eta(100, 0.0), "?");
        assert_eq!(eta(100, 10.0), "10s");
        assert_eq!(eta(185, 1.0), "3m 05s");
        assert_eq!(eta(3720, 1.0), "1h 02m");
    }

    #[test]
    fn a_bar_created_late_shows_the_average_rate_not_the_jump() {
        // Half of 2e7 done in one second, as when the bar appears: ~10 M elements/s, not
        // the jump from 0 to 10^7 in a few microseconds.
        let bar = bar(10_000_000, 20_000_000, Duration::from_secs(1));
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        let per_s = bar.position() as f64 / bar.elapsed().as_secs_f64();
        assert!((5e6..1.1e7).contains(&per_s), "{per_s}");
        assert!(bar.elapsed() >= Duration::from_secs(1));
    }
}

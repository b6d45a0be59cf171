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
            Event::Progress { done, n } => match &state.bar {
                Some(bar) => bar.set_position(done),
                None if self.bar_wanted
                    && state.began.is_some_and(|t| t.elapsed() >= BAR_AFTER) =>
                {
                    state.bar = Some(bar(done, n));
                }
                None => {}
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

fn bar(done: u64, n: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {percent:>3}% {human_pos}/{human_len} elements, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(done);
    bar
}

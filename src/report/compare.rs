//! `procpool compare-modes` as a person reads it: both walls with their spread, the ratio,
//! the parts that explain it, and when each mode wins. The numbers are
//! [`crate::lab::ModesComparison`]; `--json` prints its serde form.

use std::fmt::Write;

use crate::lab::compare::{ModeSide, ModesComparison};
use crate::units::seconds_spread;

/// One mode's line: wall ± sd, start, compute, faults, verified.
fn side_line(name: &str, m: &ModeSide) -> String {
    let faults = m
        .minor_faults
        .as_ref()
        .map(|f| format!(", {:.0} page faults", f.mean))
        .unwrap_or_default();
    let verified = match m.verified {
        Some(true) => "verified",
        Some(false) => "NOT verified",
        None => "not checked",
    };
    format!(
        "  {name:<10} {}  (start {}, compute {}{faults}; {verified})",
        seconds_spread(m.wall_s.mean, m.wall_s.sd, m.wall_s.runs),
        crate::units::seconds_short(m.spawn_s.mean),
        crate::units::seconds_short(m.compute_s.mean),
    )
}

/// Renders the comparison for a terminal.
pub fn render_text(c: &ModesComparison) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "procpool compare-modes: {} n={} on {}; {}; {} (processes, threads, alternating)",
        c.workload,
        c.n,
        crate::units::count(c.workers, "worker"),
        crate::units::count(c.cores_logical, "logical core"),
        crate::units::count(c.rounds, "round"),
    );
    let _ = writeln!(s, "{}", side_line("processes", &c.processes));
    let _ = writeln!(s, "{}", side_line("threads", &c.threads));
    let sd = if c.ratio.sd > 0.0 {
        format!(" ± {:.2}", c.ratio.sd)
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "  ratio      {:.2}{sd}×  processes / threads wall time",
        c.ratio.value
    );
    let _ = writeln!(s, "why:");
    for line in &c.why {
        let _ = writeln!(s, "  {line}");
    }
    let _ = writeln!(s, "when each wins:");
    for line in &c.framing {
        let _ = writeln!(s, "  {line}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::measure::{Ratio, summarize};

    #[test]
    fn text_has_both_walls_the_ratio_why_and_the_framing() {
        let side = |wall: f64| ModeSide {
            wall_s: summarize(&[wall, wall * 1.1]).unwrap(),
            spawn_s: summarize(&[0.002]).unwrap(),
            compute_s: summarize(&[0.08]).unwrap(),
            dispatch_s: summarize(&[0.0]).unwrap(),
            minor_faults: summarize(&[39_000.0]),
            verified: Some(true),
        };
        let c = ModesComparison {
            meta: crate::lab::Meta::sample(),
            workload: "squares".into(),
            n: 10_000_000,
            workers: 2,
            cores_logical: 2,
            rounds: 2,
            processes: side(0.06),
            threads: side(0.04),
            ratio: Ratio {
                value: 1.5,
                sd: 0.1,
            },
            why: vec!["one".into()],
            framing: vec!["two".into()],
        };
        let text = render_text(&c);
        assert!(text.starts_with(
            "procpool compare-modes: squares n=10000000 on 2 workers; 2 logical cores; 2 \
             rounds (processes, threads, alternating)\n  processes "
        ));
        assert!(text.contains("39000 page faults; verified)"), "{text}");
        assert!(text.contains("\n  ratio      1.50 ± 0.10×  processes / threads wall time\n"));
        assert!(
            text.ends_with("why:\n  one\nwhen each wins:\n  two\n"),
            "{text}"
        );
    }
}

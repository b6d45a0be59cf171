//! Numbers as people read them: durations, bytes, rates, ratios and counts. The one place
//! every report, table, advice line and error message takes its units from.

/// Seconds with a fixed number of digits per unit, for tables and reports that line up:
/// `6.627 s`, `5.36 ms`, `138.4 µs`.
pub(crate) fn seconds(x: f64) -> String {
    let (value, unit, digits) = seconds_scale(x);
    format!("{:.digits$} {unit}", value)
}

/// A mean and its standard deviation as `mean ± sd unit`, in the unit the mean reads best
/// in (just `mean unit` for a single run).
pub(crate) fn seconds_spread(mean: f64, sd: f64, runs: usize) -> String {
    let (_, unit, digits) = seconds_scale(mean);
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e3,
        _ => 1e6,
    };
    if runs <= 1 {
        format!("{:.digits$} {unit}", mean * scale)
    } else {
        format!("{:.digits$} ± {:.digits$} {unit}", mean * scale, sd * scale)
    }
}

fn seconds_scale(x: f64) -> (f64, &'static str, usize) {
    if x >= 1.0 {
        (x, "s", 3)
    } else if x >= 1e-3 {
        (x * 1e3, "ms", 2)
    } else {
        (x * 1e6, "µs", 1)
    }
}

/// Seconds in words, short: `15 µs`, `6.9 ms`, `1.2 s`, `40 ns`.
pub(crate) fn seconds_short(s: f64) -> String {
    let (v, unit) = if s >= 0.9995 {
        (s, "s")
    } else if s >= 0.9995e-3 {
        (s * 1e3, "ms")
    } else if s >= 0.9995e-6 {
        (s * 1e6, "µs")
    } else {
        (s * 1e9, "ns")
    };
    format!("{} {unit}", num(v))
}

/// `3`, `3.5`, `12`: one decimal below 10, none above, no trailing `.0`.
pub(crate) fn num(v: f64) -> String {
    if v >= 9.95 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.1}");
        s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
    }
}

/// Bytes in binary units, one decimal, none when whole: `64 B`, `1.5 KiB`, `32 MiB`.
pub(crate) fn bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

/// Bytes per second in decimal units, as disks and networks are rated: `1.6 GB/s`,
/// `25 MB/s`.
pub(crate) fn rate(bytes_per_s: f64) -> String {
    if bytes_per_s >= 0.9995e9 {
        format!("{} GB/s", num(bytes_per_s / 1e9))
    } else {
        format!("{} MB/s", num(bytes_per_s / 1e6))
    }
}

/// `0.956` → `96%`.
pub(crate) fn percent(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// `part` of `whole` as a percentage (`100%` when `whole` is 0).
pub(crate) fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        "100%".into()
    } else {
        percent(part as f64 / whole as f64)
    }
}

/// `1.17×`, as the report prints speedups.
pub(crate) fn times(x: f64) -> String {
    format!("{x:.2}×")
}

/// `1 core`, `8 workers`, `2 processes`: the count and the word, plural unless it is one.
pub(crate) fn count<N: std::fmt::Display + PartialEq + From<u8>>(n: N, word: &str) -> String {
    if n == N::from(1) {
        format!("1 {word}")
    } else {
        format!("{n} {}", plural(word))
    }
}

/// The English plural of a (regular) noun: `worker` → `workers`, `process` → `processes`.
pub(crate) fn plural(word: &str) -> String {
    if ["s", "x", "ch", "sh"].iter().any(|end| word.ends_with(end)) {
        format!("{word}es")
    } else {
        format!("{word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(seconds(6.6274), "6.627 s");
        assert_eq!(seconds(0.005_36), "5.36 ms");
        assert_eq!(seconds(138.4e-6), "138.4 µs");
        assert_eq!(seconds_short(15e-6), "15 µs");
        assert_eq!(seconds_short(0.0069), "6.9 ms");
        assert_eq!(seconds_short(1.2), "1.2 s");
        assert_eq!(seconds_short(4e-8), "40 ns");

        assert_eq!(seconds_spread(0.0123, 0.0004, 3), "12.30 ± 0.40 ms");
        assert_eq!(seconds_spread(2.0, 0.1, 1), "2.000 s");
    }

    #[test]
    fn bytes_and_rates_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(64), "64 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(32 << 20), "32 MiB");
        assert_eq!(bytes(80_000_000_000_000), "72.8 TiB");
        assert_eq!(bytes(u128::from(u64::MAX)), "16 EiB");
        assert_eq!(rate(1.6e9), "1.6 GB/s");
        assert_eq!(rate(25e6), "25 MB/s");
    }

    #[test]
    fn counts_agree_with_their_number() {
        assert_eq!(count(1, "worker"), "1 worker");
        assert_eq!(count(0, "worker"), "0 workers");
        assert_eq!(count(8usize, "core"), "8 cores");
        assert_eq!(count(1u64, "worker process"), "1 worker process");
        assert_eq!(count(2u64, "worker process"), "2 worker processes");
        assert_eq!(count(3, "logical core"), "3 logical cores");
        assert_eq!(plural("match"), "matches");
        assert_eq!(share(1, 4), "25%");
        assert_eq!(share(0, 0), "100%");
        assert_eq!(times(1.234), "1.23×");
    }
}

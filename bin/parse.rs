//! Parsing the numbers users type: counts like `10000000`, `10_000_000` and `1e7`, and
//! durations like `500ms` and `2s`.

use std::time::Duration;

/// Parses a non-negative whole count: digits with optional `_` separators, or scientific
/// notation with a whole result (`1e7`, `2.5e6`).
pub(crate) fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("expected a whole number such as 1000, 10_000_000 or 1e7, got nothing".into());
    }
    if t.starts_with('-') {
        return Err(format!("`{s}` is negative: expected a whole number ≥ 0"));
    }
    let plain: String = t.chars().filter(|&c| c != '_').collect();
    if plain.chars().all(|c| c.is_ascii_digit()) {
        return plain
            .parse::<u64>()
            .map_err(|_| format!("`{s}` is too large (the largest is {})", u64::MAX));
    }
    if let Some((mantissa, exp)) = plain.split_once(['e', 'E']) {
        let exp: u32 = exp
            .strip_prefix('+')
            .unwrap_or(exp)
            .parse()
            .map_err(|_| format!("`{s}` has a bad exponent: expected e.g. 1e7"))?;
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits_ok = |p: &str| p.chars().all(|c| c.is_ascii_digit());
        if int.is_empty() && frac.is_empty() || !digits_ok(int) || !digits_ok(frac) {
            return Err(format!(
                "`{s}` is not a number: expected e.g. 10000000 or 1e7"
            ));
        }
        // Exact decimal arithmetic: value = int.frac × 10^exp.
        let frac = frac.trim_end_matches('0');
        let shift = exp
            .checked_sub(frac.len() as u32)
            .ok_or_else(|| format!("`{s}` is not a whole number"))?;
        let digits = format!("{int}{frac}");
        let base: u128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| too_large(s))?
        };
        let value = 10u128
            .checked_pow(shift)
            .and_then(|p| base.checked_mul(p))
            .ok_or_else(|| too_large(s))?;
        return u64::try_from(value).map_err(|_| too_large(s));
    }
    if plain.contains('.') {
        return Err(format!("`{s}` is not a whole number"));
    }
    Err(format!(
        "`{s}` is not a number: expected e.g. 10000000, 10_000_000 or 1e7"
    ))
}

fn too_large(s: &str) -> String {
    format!("`{s}` is too large (the largest is {})", u64::MAX)
}

/// Parses a size in bytes: a count with an optional unit, decimal prefixes meaning powers
/// of 1000 and binary ones powers of 1024, as the report prints them: `64MiB` (64 × 2^20),
/// `64MB` and `64M` (64 × 10^6), `512kB`, `512KiB`, `1GiB`, `2TB`, `1e6`.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "`{s}`: unknown unit `{unit}` (use kB, MB, GB, TB for powers of 1000, or \
                 KiB, MiB, GiB, TiB for powers of 1024)"
            ));
        }
    };
    let n = parse_count(num.trim())?;
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// The longest duration [`parse_duration`] accepts: 365 days, longer than any job should
/// wait, and far from where deadlines (`Instant + duration`) would overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Parses a duration: a number followed by `ms`, `s`, `m` or `us` (`500ms`, `2s`, `1.5s`),
/// at most [`MAX_DURATION`].
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{s}` has no unit: write e.g. 500ms or 2s"))?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write e.g. 500ms or 2s"))?;
    let secs = match unit {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" | "min" => value * 60.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use us, ms, s or m)")),
    };
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "`{s}` is too long: at most 365 days (write e.g. 30s or 10m)"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_every_spelling() {
        assert_eq!(parse_count("10000000"), Ok(10_000_000));
        assert_eq!(parse_count("10_000_000"), Ok(10_000_000));
        assert_eq!(parse_count("1e7"), Ok(10_000_000));
        assert_eq!(parse_count("1E7"), Ok(10_000_000));
        assert_eq!(parse_count("2.5e6"), Ok(2_500_000));
        assert_eq!(parse_count("1e+3"), Ok(1000));
        assert_eq!(parse_count("0"), Ok(0));
        assert_eq!(parse_count("1e13"), Ok(10_000_000_000_000));
        assert_eq!(parse_count("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn bad_counts_say_why() {
        assert!(parse_count("-5").unwrap_err().contains("negative"));
        assert!(parse_count("1.5").unwrap_err().contains("whole"));
        assert!(parse_count("1.25e1").unwrap_err().contains("whole"));
        assert!(parse_count("abc").unwrap_err().contains("not a number"));
        assert!(parse_count("1e30").unwrap_err().contains("too large"));
        assert!(parse_count("").is_err());
        assert!(parse_count("1ee3").is_err());
    }

    #[test]
    fn sizes() {
        // Binary prefixes: powers of 1024.
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("512kib"), Ok(512 << 10));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("2TiB"), Ok(2 << 40));
        // Decimal prefixes: powers of 1000, as rates and disks are printed.
        assert_eq!(parse_bytes("64MB"), Ok(64_000_000));
        assert_eq!(parse_bytes("64M"), Ok(64_000_000));
        assert_eq!(parse_bytes("512kB"), Ok(512_000));
        assert_eq!(parse_bytes("512KB"), Ok(512_000));
        assert_eq!(parse_bytes("512k"), Ok(512_000));
        assert_eq!(parse_bytes("3GB"), Ok(3_000_000_000));
        assert_eq!(parse_bytes("2TB"), Ok(2_000_000_000_000));
        assert_eq!(parse_bytes("1.5e3 kB"), Ok(1_500_000));
        assert_eq!(parse_bytes("64 B"), Ok(64));
        assert_eq!(
            parse_bytes("20000000TB"),
            Err("`20000000TB` is too large".into())
        );
        let err = parse_bytes("3 apples").unwrap_err();
        assert!(
            err.contains("KiB, MiB, GiB, TiB for powers of 1024"),
            "{err}"
        );
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("1e6"), Ok(1_000_000));
        assert!(parse_bytes("3 apples").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn durations_are_at_most_a_year() {
        assert_eq!(parse_duration("525600m"), Ok(MAX_DURATION));
        for s in [
            "525601m",
            "10000000000000000000s",
            "99999999999999999999999m",
        ] {
            let err = parse_duration(s).unwrap_err();
            assert!(err.contains("at most 365 days"), "{s}: {err}");
        }
    }
}

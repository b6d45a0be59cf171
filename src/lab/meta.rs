//! What every JSON document procpool prints starts with: the schema's version, procpool's
//! version, when the run started, and the machine it ran on (kernel, CPU model, cores and
//! what limited them, memory and the cgroup's limit), so that results from two machines or
//! two releases can be compared (hyperfine#711, #460). Also the default worker count, and
//! the `PROCPOOL_WORKERS` variable that sets it.
//!
//! The files read here (/proc/sys/kernel/osrelease, /proc/cpuinfo) and the environment are
//! untrusted input: anything odd gives `None` or a plain error, never a panic.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::engine::limits::Machine;
use crate::error::{Error, Result};

/// The version of the JSON documents' layout. It goes up when a key changes meaning or
/// disappears; a new key alone does not bump it.
pub const SCHEMA_VERSION: u32 = 1;

/// The environment variable that sets the default worker count.
pub const WORKERS_ENV: &str = "PROCPOOL_WORKERS";

/// The metadata at the top of every JSON document (flattened into it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Meta {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The procpool release that wrote the document (`CARGO_PKG_VERSION`).
    pub procpool_version: String,
    /// When the run started, RFC 3339 in UTC (`2026-11-23T15:20:48Z`).
    pub started_at: String,
    /// The machine it ran on.
    pub machine: MachineInfo,
}

/// The machine a run ran on, as the JSON documents give it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineInfo {
    /// The kernel release (`uname -r`), when readable.
    pub kernel: Option<String>,
    /// The CPU model (/proc/cpuinfo's first "model name"), when the kernel tells.
    pub cpu_model: Option<String>,
    /// The machine's online logical CPUs.
    pub cpus_online: usize,
    /// Physical cores, when known.
    pub cores_physical: Option<usize>,
    /// CPUs in this process's affinity mask (`taskset`).
    pub cpus_allowed: usize,
    /// The cgroup's CPU quota in CPUs (`1.5`); null without one.
    pub cpu_quota: Option<f64>,
    /// The CPUs this process may use: the fewest of `cpus_allowed` and the whole quota.
    pub cpus_effective: usize,
    /// How `cpus_effective` was decided, in words (`affinity 1 of 2 CPUs → 1 CPU`).
    pub cores_decided_by: String,
    /// Total memory, in bytes.
    pub memory_total_bytes: u64,
    /// Memory available when the run started (MemAvailable), in bytes.
    pub memory_available_bytes: u64,
    /// The cgroup's memory limit, in bytes; null without one.
    pub cgroup_memory_limit_bytes: Option<u64>,
    /// What the cgroup used when the run started, in bytes; null without a limit.
    pub cgroup_memory_usage_bytes: Option<u64>,
}

impl Meta {
    /// The metadata of a run that started at `started` on `machine`.
    pub fn new(started: SystemTime, machine: &Machine) -> Self {
        let cpus = machine.cpus;
        Meta {
            schema_version: SCHEMA_VERSION,
            procpool_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: rfc3339(started),
            machine: MachineInfo {
                kernel: kernel_release(),
                cpu_model: cpu_model(),
                cpus_online: cpus.online,
                cores_physical: machine.cores_physical,
                cpus_allowed: cpus.allowed,
                cpu_quota: cpus.quota,
                cpus_effective: cpus.effective,
                cores_decided_by: cpus.describe(),
                memory_total_bytes: machine.total_memory,
                memory_available_bytes: machine.available_memory,
                cgroup_memory_limit_bytes: machine.memory_limit.map(|m| m.limit),
                cgroup_memory_usage_bytes: machine.memory_limit.map(|m| m.usage),
            },
        }
    }

    /// Fixed metadata for tests and examples of renderings.
    #[doc(hidden)]
    pub fn sample() -> Self {
        Meta {
            schema_version: SCHEMA_VERSION,
            procpool_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: "2026-01-02T03:04:05Z".into(),
            machine: MachineInfo {
                kernel: Some("6.1.0".into()),
                cpu_model: Some("Example CPU".into()),
                cpus_online: 2,
                cores_physical: Some(2),
                cpus_allowed: 2,
                cpu_quota: None,
                cpus_effective: 2,
                cores_decided_by: "2 CPUs, no affinity mask or quota".into(),
                memory_total_bytes: 8 << 30,
                memory_available_bytes: 4 << 30,
                cgroup_memory_limit_bytes: None,
                cgroup_memory_usage_bytes: None,
            },
        }
    }
}

/// Where a run's worker count came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkersFrom {
    /// Given explicitly (`--workers`, or a library caller's number).
    #[default]
    Given,
    /// The `PROCPOOL_WORKERS` environment variable.
    Env,
    /// The default: one per effective CPU ([`Machine::cores_logical`]).
    Cpus,
}

/// The default worker count and where it came from: `PROCPOOL_WORKERS` when set (a
/// positive whole number, else an error naming the variable and the fix), otherwise one
/// worker per effective CPU of `machine`.
pub fn default_workers(machine: &Machine) -> Result<(usize, WorkersFrom)> {
    workers_from_env(
        std::env::var_os(WORKERS_ENV).as_deref(),
        machine.cores_logical,
    )
}

/// [`default_workers`] with the variable's value (`None`: unset) and the CPU count.
fn workers_from_env(value: Option<&std::ffi::OsStr>, cpus: usize) -> Result<(usize, WorkersFrom)> {
    let Some(value) = value else {
        return Ok((cpus.max(1), WorkersFrom::Cpus));
    };
    let text = value.to_string_lossy();
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok((n, WorkersFrom::Env)),
        _ => {
            let shown: String = text.chars().take(40).collect();
            Err(Error::invalid_input(format!(
                "{WORKERS_ENV}={shown:?} is not a worker count: set it to a whole number of \
                 at least 1 (e.g. {WORKERS_ENV}=4), or unset it to use one worker per CPU"
            )))
        }
    }
}

/// `uname -r`: /proc/sys/kernel/osrelease's one line.
fn kernel_release() -> Option<String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    one_line(&text)
}

/// /proc/cpuinfo's first `model name` (x86; other architectures may have none).
fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    model_name(&text)
}

/// The first `model name : …` value of a /proc/cpuinfo text.
fn model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| one_line(value))?
    })
}

/// A short, trimmed, printable line; `None` when empty.
fn one_line(text: &str) -> Option<String> {
    let line: String = text
        .trim()
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    (!line.is_empty()).then_some(line)
}

/// `time` in RFC 3339, UTC, to the second: `2026-11-23T15:20:48Z` (times before 1970 read
/// as 1970-01-01T00:00:00Z).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(253_402_300_799); // 9999-12-31T23:59:59Z
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of the `days`-th day after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::time::Duration;

    #[test]
    fn times_read_as_rfc3339_utc() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_447_248), "2026-11-23T15:20:48Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(u64::MAX / 2), "9999-12-31T23:59:59Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) \
                    CPU @ 2.20GHz\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(
            model_name(info).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(model_name("processor : 0\nBogoMIPS : 50\n"), None);
        assert_eq!(model_name("model name :   \n"), None);
        assert_eq!(model_name(""), None);
        assert_eq!(one_line("x\u{1b}y\n").as_deref(), Some("x y"));
    }

    #[test]
    fn procpool_workers_must_be_a_positive_count() {
        assert_eq!(workers_from_env(None, 4).unwrap(), (4, WorkersFrom::Cpus));
        assert_eq!(
            workers_from_env(Some(OsStr::new("3")), 4).unwrap(),
            (3, WorkersFrom::Env)
        );
        assert_eq!(
            workers_from_env(Some(OsStr::new(" 12\n")), 4).unwrap(),
            (12, WorkersFrom::Env)
        );
        for bad in ["0", "abc", "", "-1", "1.5", "99999999999999999999999"] {
            let err = workers_from_env(Some(OsStr::new(bad)), 4).unwrap_err();
            assert!(err.is_invalid_input(), "{bad}");
            let err = err.to_string();
            assert!(err.contains("PROCPOOL_WORKERS"), "{err}");
            assert!(err.contains("at least 1"), "{err}");
        }
    }

    #[test]
    fn meta_carries_the_versions() {
        let meta = Meta::new(SystemTime::now(), &Machine::read());
        assert_eq!(meta.schema_version, SCHEMA_VERSION);
        assert_eq!(meta.procpool_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(meta.started_at.len(), 20, "{}", meta.started_at);
        assert!(meta.machine.cpus_effective >= 1);
        assert!(meta.machine.cpus_effective <= meta.machine.cpus_allowed);
    }
}

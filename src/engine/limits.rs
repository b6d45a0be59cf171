//! What the machine has and what a job needs, checked before anything starts.

use crate::engine::cgroup::{Cgroup, parse_cpu_list};
use crate::error::{Error, Result};
use crate::units::count;

pub use crate::engine::cgroup::MemoryLimit;

/// Cores and memory of this machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Machine {
    /// Logical CPUs this process may run on (cgroup and affinity limits respected):
    /// [`Cpus::effective`].
    pub cores_logical: usize,
    /// Physical cores, when the OS tells.
    pub cores_physical: Option<usize>,
    /// Total memory in bytes.
    pub total_memory: u64,
    /// Memory available to new allocations, in bytes (/proc/meminfo's MemAvailable).
    pub available_memory: u64,
    /// The machine's CPUs, the affinity mask and the cgroup quota, and what they leave.
    pub cpus: Cpus,
    /// The cgroup's memory limit, when it has one.
    pub memory_limit: Option<MemoryLimit>,
}

/// How many CPUs this process may use, and what decided it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpus {
    /// The machine's online logical CPUs.
    pub online: usize,
    /// CPUs in this process's affinity mask (`taskset`).
    pub allowed: usize,
    /// The cgroup's CPU quota in CPUs (`1.5`), when it has one.
    pub quota: Option<f64>,
    /// What the three leave: the fewest of the allowed CPUs and the whole quota (at
    /// least 1).
    pub effective: usize,
}

impl Cpus {
    /// Decides the effective CPUs from the machine's `online` CPUs, the `allowed` ones and
    /// the `quota`; `std_count` is what the standard library counted (it may know a limit
    /// not read here), taken when smaller.
    pub(crate) fn decide(
        online: usize,
        allowed: usize,
        quota: Option<f64>,
        std_count: usize,
    ) -> Self {
        let online = online.max(1);
        let allowed = allowed.clamp(1, online);
        let by_quota = quota.map_or(usize::MAX, |q| {
            if q.is_finite() && q >= 1.0 {
                q.floor().min(usize::MAX as f64) as usize
            } else {
                1
            }
        });
        let effective = allowed.min(by_quota).min(std_count.max(1)).max(1);
        Cpus {
            online,
            allowed,
            quota,
            effective,
        }
    }

    /// In words: `2 CPUs, no affinity mask or quota`, `affinity 1 of 2 CPUs → 1 CPU`,
    /// `2 CPUs, quota 1.5 → 1 CPU`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.allowed < self.online {
            parts.push(format!(
                "affinity {} of {}",
                self.allowed,
                count(self.online, "CPU")
            ));
        } else {
            parts.push(count(self.online, "CPU"));
        }
        if let Some(q) = self.quota {
            parts.push(format!("quota {}", crate::units::num(q)));
        }
        let text = parts.join(", ");
        if self.allowed == self.online && self.quota.is_none() && self.effective == self.online {
            format!("{text}, no affinity mask or quota")
        } else {
            format!("{text} → {}", count(self.effective, "CPU"))
        }
    }
}

impl Machine {
    /// Reads the machine (a few hundred microseconds: /proc/meminfo, the CPU topology and
    /// the cgroup's files).
    pub fn read() -> Self {
        let std_count = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let allowed = crate::engine::sys::allowed_cpus().len();
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|t| parse_cpu_list(&t))
            .unwrap_or(allowed.max(std_count));
        let cgroup = Cgroup::read();
        let cpus = Cpus::decide(online, allowed, cgroup.cpu_quota(), std_count);
        let cores_physical = sysinfo::System::physical_core_count().ok();
        let (total_memory, available_memory) = match sysinfo::System::new() {
            Ok(mut sys) => {
                sys.refresh_memory();
                (sys.total_memory(), sys.available_memory())
            }
            Err(_) => (u64::MAX, u64::MAX),
        };
        Machine {
            cores_logical: cpus.effective,
            cores_physical,
            total_memory,
            available_memory,
            cpus,
            memory_limit: cgroup.memory_limit(),
        }
    }

    /// The memory a job may use now: the smaller of MemAvailable and what the cgroup's
    /// limit leaves.
    pub fn usable_memory(&self) -> u64 {
        match self.memory_limit {
            Some(m) => self.available_memory.min(m.left()),
            None => self.available_memory,
        }
    }
}

/// Refuses a job whose memory (`parts`: what and how many bytes) does not fit in the
/// memory available now: MemAvailable, or what the cgroup's memory limit leaves when that
/// is less (the message names which).
pub(crate) fn check_memory(what: &str, parts: &[(&str, u128)], machine: &Machine) -> Result<()> {
    let needed: u128 = parts.iter().map(|(_, b)| b).sum();
    if needed <= u128::from(machine.usable_memory()) {
        return check_address_space(
            what,
            parts,
            crate::engine::sys::address_space_limit(),
            crate::engine::sys::address_space_in_use().unwrap_or(0),
        );
    }
    let detail = parts_detail(parts);
    let bytes = |b: u64| crate::units::bytes(u128::from(b));
    let has = match machine.memory_limit {
        Some(m) if m.left() < machine.available_memory => format!(
            "this process's cgroup memory limit ({}) is {} with {} in use, which leaves {} \
             (the machine has {} available)",
            m.file,
            bytes(m.limit),
            bytes(m.usage),
            bytes(m.left()),
            bytes(machine.available_memory)
        ),
        _ => format!(
            "this machine has {} available ({} total)",
            bytes(machine.available_memory),
            bytes(machine.total_memory)
        ),
    };
    Err(Error::invalid_input(format!(
        "{what} needs {} of memory{detail}; {has}: use a smaller n{}",
        crate::units::bytes(needed),
        if parts.len() > 1 {
            " or turn off `baseline`"
        } else {
            ""
        }
    )))
}

/// " (1 GiB shared results + 1 GiB single-process baseline)" for more than one part.
fn parts_detail(parts: &[(&str, u128)]) -> String {
    if parts.len() < 2 {
        return String::new();
    }
    let items: Vec<String> = parts
        .iter()
        .map(|(name, b)| format!("{} {name}", crate::units::bytes(*b)))
        .collect();
    format!(" ({})", items.join(" + "))
}

/// Refuses a job whose memory (`parts`) does not fit in what is left of the address-space
/// limit (`ulimit -v`, in bytes; `None`: unlimited) after the `in_use` bytes this process
/// has mapped already. Allocating past the limit would fail half-way through the job.
pub(crate) fn check_address_space(
    what: &str,
    parts: &[(&str, u128)],
    limit: Option<u64>,
    in_use: u64,
) -> Result<()> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let needed: u128 = parts.iter().map(|(_, b)| b).sum();
    let left = limit.saturating_sub(in_use);
    if needed <= u128::from(left) {
        return Ok(());
    }
    // `ulimit -v` counts KiB: what to raise it to, with what is in use now to spare.
    let want_kib = (needed + u128::from(in_use) * 2).div_ceil(1024);
    Err(Error::invalid_input(format!(
        "{what} needs {} of address space{} but the address-space limit (ulimit -v) is {} \
         and {} of it is in use already: raise it with `ulimit -v {want_kib}` (or unlimited), \
         or use a smaller n{}",
        crate::units::bytes(needed),
        parts_detail(parts),
        crate::units::bytes(u128::from(limit)),
        crate::units::bytes(u128::from(in_use)),
        if parts.len() > 1 {
            " or turn off `baseline`"
        } else {
            ""
        }
    )))
}

/// Open files the parent needs per worker: the two channel ends, plus the handshake socket
/// and the pipes `fork`/`exec` use while it starts.
pub(crate) const FILES_PER_WORKER: u64 = 4;
/// Open files kept free for everything else (stdio, the memfd, epoll, sysinfo).
pub(crate) const FILES_RESERVED: u64 = 64;
/// Open files held for a moment while a batch of workers starts through the fork server:
/// each worker's ends of its output pipe and input socket on both sides until the request
/// is sent, then the two channels of each in the answer.
pub(crate) const FILES_STARTING: u64 = 4 * crate::engine::forkserver::BATCH as u64;

/// Checks that `workers` workers can be started under the open-file and process limits,
/// raising the soft open-file limit up to the hard limit when that is enough and `raise`.
pub(crate) fn check_worker_limits(workers: usize, raise: bool) -> Result<()> {
    let want = FILES_RESERVED + FILES_STARTING + FILES_PER_WORKER * workers as u64;
    let (soft, hard) = crate::engine::sys::open_file_limit()?;
    if soft < want {
        let got = if raise {
            crate::engine::sys::raise_open_file_limit(want).unwrap_or(soft)
        } else {
            soft
        };
        if got < want {
            return Err(Error::invalid(
                "workers",
                format!(
                    "`workers` {workers} needs about {want} open files but the open-file \
                     limit (ulimit -n) is {soft} (hard limit {hard}): raise it with \
                     `ulimit -n {want}` or use fewer workers"
                ),
            ));
        }
    }
    if let Some(nproc) = crate::engine::sys::process_limit()
        && workers as u64 >= nproc
    {
        return Err(Error::invalid(
            "workers",
            format!(
                "`workers` {workers} needs {} but the process limit \
                 (ulimit -u) is {nproc}: raise it or use fewer workers",
                count(workers, "process")
            ),
        ));
    }
    Ok(())
}

/// The most threads `--mode threads` starts: beyond this, stacks alone reserve gigabytes and
/// the kernel's thread limits come close.
pub(crate) const MAX_THREADS: usize = 4096;

/// Checks that `workers` threads can be started in this process: at most [`MAX_THREADS`],
/// and within the process limit (`ulimit -u`), which counts threads too. A limit set by the
/// user is respected even where the kernel would not hold this process to it (root).
pub(crate) fn check_thread_limits(workers: usize) -> Result<()> {
    if workers > MAX_THREADS {
        return Err(Error::invalid(
            "workers",
            format!(
                "`workers` {workers} is too many threads for `mode` threads: at most \
                 {MAX_THREADS} (use fewer workers, or `mode` processes)"
            ),
        ));
    }
    check_thread_limit(
        workers,
        crate::engine::sys::thread_count().unwrap_or(1),
        crate::engine::sys::process_soft_limit(),
    )
}

/// [`check_thread_limits`] against a given process limit (`None`: unlimited), with
/// `running` threads in this process already.
fn check_thread_limit(workers: usize, running: usize, nproc: Option<u64>) -> Result<()> {
    let Some(nproc) = nproc else {
        return Ok(());
    };
    let want = workers as u64 + running as u64;
    if want > nproc {
        return Err(Error::invalid(
            "workers",
            format!(
                "`mode` threads with `workers` {workers} needs {want} threads with procpool's \
                 own, but the process limit (ulimit -u), which counts threads, is {nproc}: \
                 raise it with `ulimit -u {want}` or use fewer workers"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(avail: u64) -> Machine {
        Machine {
            cores_logical: 2,
            cores_physical: Some(2),
            total_memory: avail * 2,
            available_memory: avail,
            cpus: Cpus::decide(2, 2, None, 2),
            memory_limit: None,
        }
    }

    #[test]
    fn memory_check_names_the_cgroup_limit_when_it_is_tighter() {
        let mut m = machine(8 << 30);
        m.memory_limit = Some(MemoryLimit {
            limit: 1 << 30,
            usage: 256 << 20,
            file: "memory.max",
        });
        assert_eq!(m.usable_memory(), 768 << 20);
        assert!(check_memory("x", &[("a", 512 << 20)], &m).is_ok());
        let err = check_memory("squares with n = 1e8", &[("shared results", 800 << 20)], &m)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cgroup memory limit (memory.max) is 1 GiB"),
            "{err}"
        );
        assert!(
            err.contains("256 MiB in use, which leaves 768 MiB"),
            "{err}"
        );
        // A looser limit leaves MemAvailable in charge, and the message says so.
        m.memory_limit = Some(MemoryLimit {
            limit: 64 << 30,
            usage: 0,
            file: "memory.limit_in_bytes",
        });
        let err = check_memory("x", &[("a", 9 << 30)], &m)
            .unwrap_err()
            .to_string();
        assert!(err.contains("this machine has 8 GiB available"), "{err}");
    }

    #[test]
    fn effective_cpus_follow_affinity_and_quota_and_say_why() {
        let plain = Cpus::decide(2, 2, None, 2);
        assert_eq!(plain.effective, 2);
        assert_eq!(plain.describe(), "2 CPUs, no affinity mask or quota");
        let pinned = Cpus::decide(2, 1, None, 1);
        assert_eq!(pinned.effective, 1);
        assert_eq!(pinned.describe(), "affinity 1 of 2 CPUs → 1 CPU");
        let quota = Cpus::decide(2, 2, Some(1.5), 1);
        assert_eq!(quota.effective, 1);
        assert_eq!(quota.describe(), "2 CPUs, quota 1.5 → 1 CPU");
        let small = Cpus::decide(8, 4, Some(0.5), 4);
        assert_eq!(small.effective, 1);
        assert_eq!(small.describe(), "affinity 4 of 8 CPUs, quota 0.5 → 1 CPU");
        let odd = Cpus::decide(0, 5, Some(f64::NAN), 0);
        assert_eq!((odd.online, odd.allowed, odd.effective), (1, 1, 1));
    }

    #[test]
    fn memory_check_names_what_is_needed_and_what_there_is() {
        let m = machine(1 << 30);
        assert!(check_memory("x", &[("a", 1 << 29)], &m).is_ok());
        let err = check_memory(
            "squares with n = 10^13",
            &[
                ("shared results", 80_000_000_000_000),
                ("baseline", 80_000_000_000_000),
            ],
            &m,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs 145.5 TiB"), "{err}");
        assert!(err.contains("1 GiB available"), "{err}");
        assert!(err.contains("turn off `baseline`"), "{err}");
    }

    #[test]
    fn address_space_check_names_the_limit_and_the_sizes() {
        let parts = [("shared results", 300 << 20), ("baseline", 300 << 20)];
        assert!(check_address_space("x", &parts, None, 1 << 30).is_ok());
        assert!(check_address_space("x", &parts, Some(2 << 30), 1 << 30).is_ok());
        let err = check_address_space("squares with n = 1e8", &parts, Some(1 << 30), 500 << 20)
            .unwrap_err();
        assert!(err.is_invalid_input());
        let err = err.to_string();
        assert!(err.contains("needs 600 MiB of address space"), "{err}");
        assert!(err.contains("(ulimit -v) is 1 GiB"), "{err}");
        assert!(err.contains("500 MiB of it is in use"), "{err}");
        assert!(err.contains("`ulimit -v 1638400`"), "{err}");
        assert!(err.contains("turn off `baseline`"), "{err}");
    }

    #[test]
    fn thread_limits_name_ulimit_u_and_the_workers() {
        assert!(check_thread_limit(1000, 2, None).is_ok());
        assert!(check_thread_limit(98, 2, Some(100)).is_ok());
        let err = check_thread_limit(1000, 2, Some(100)).unwrap_err();
        assert!(err.is_invalid_input());
        let err = err.to_string();
        assert!(err.contains("`workers` 1000"), "{err}");
        assert!(
            err.contains("(ulimit -u), which counts threads, is 100"),
            "{err}"
        );
        assert!(err.contains("`ulimit -u 1002`"), "{err}");
        let err = check_thread_limits(MAX_THREADS + 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 4096"), "{err}");
    }

    #[test]
    fn machine_reads_plausible_values() {
        let m = Machine::read();
        assert!(m.cores_logical >= 1);
        assert!(m.total_memory > 0 && m.available_memory <= m.total_memory);
    }
}

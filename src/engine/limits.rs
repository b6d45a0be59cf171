//! What the machine has and what a job needs, checked before anything starts.

use crate::error::{Error, Result};

/// Cores and memory of this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    /// Logical CPUs this process may run on (cgroup and affinity limits respected).
    pub cores_logical: usize,
    /// Physical cores, when the OS tells.
    pub cores_physical: Option<usize>,
    /// Total memory in bytes.
    pub total_memory: u64,
    /// Memory available to new allocations, in bytes.
    pub available_memory: u64,
}

impl Machine {
    /// Reads the machine (a few hundred microseconds: /proc/meminfo and the CPU topology).
    pub fn read() -> Self {
        let cores_logical = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cores_physical = sysinfo::System::physical_core_count().ok();
        let (total_memory, available_memory) = match sysinfo::System::new() {
            Ok(mut sys) => {
                sys.refresh_memory();
                (sys.total_memory(), sys.available_memory())
            }
            Err(_) => (u64::MAX, u64::MAX),
        };
        Machine {
            cores_logical,
            cores_physical,
            total_memory,
            available_memory,
        }
    }
}

/// Refuses a job whose memory (`parts`: what and how many bytes) does not fit in the
/// memory available now.
pub(crate) fn check_memory(what: &str, parts: &[(&str, u128)], machine: &Machine) -> Result<()> {
    let needed: u128 = parts.iter().map(|(_, b)| b).sum();
    if needed <= u128::from(machine.available_memory) {
        return Ok(());
    }
    let detail = if parts.len() > 1 {
        let items: Vec<String> = parts
            .iter()
            .map(|(name, b)| format!("{} {name}", crate::units::bytes(*b)))
            .collect();
        format!(" ({})", items.join(" + "))
    } else {
        String::new()
    };
    Err(Error::InvalidInput(format!(
        "{what} needs {} of memory{detail}; this machine has {} available ({} total): use a smaller n{}",
        crate::units::bytes(needed),
        crate::units::bytes(u128::from(machine.available_memory)),
        crate::units::bytes(u128::from(machine.total_memory)),
        if parts.len() > 1 {
            " or --no-baseline"
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

/// Checks that `workers` workers can be started under the open-file and process limits,
/// raising the soft open-file limit up to the hard limit when that is enough and `raise`.
pub(crate) fn check_worker_limits(workers: usize, raise: bool) -> Result<()> {
    let want = FILES_RESERVED + FILES_PER_WORKER * workers as u64;
    let (soft, hard) = crate::engine::sys::open_file_limit()?;
    if soft < want {
        let got = if raise {
            crate::engine::sys::raise_open_file_limit(want).unwrap_or(soft)
        } else {
            soft
        };
        if got < want {
            return Err(Error::InvalidInput(format!(
                "--workers {workers} needs about {want} open files but the open-file limit \
                 (ulimit -n) is {soft} (hard limit {hard}): raise it with `ulimit -n {want}` \
                 or use fewer workers"
            )));
        }
    }
    if let Some(nproc) = crate::engine::sys::process_limit()
        && workers as u64 >= nproc
    {
        return Err(Error::InvalidInput(format!(
            "--workers {workers} needs {workers} processes but the process limit (ulimit -u) \
             is {nproc}: raise it or use fewer workers"
        )));
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
        }
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
        assert!(err.contains("--no-baseline"), "{err}");
    }

    #[test]
    fn machine_reads_plausible_values() {
        let m = Machine::read();
        assert!(m.cores_logical >= 1);
        assert!(m.total_memory > 0 && m.available_memory <= m.total_memory);
    }
}

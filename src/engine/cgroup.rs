//! What the process's control group allows: its CPU quota and its memory limit, from
//! cgroup v2 (`cpu.max`, `memory.max`, `memory.current`) or v1 (`cpu.cfs_quota_us`,
//! `memory.limit_in_bytes`, …). A container's limits live there, not in /proc/meminfo,
//! so a job that fits the host can still be OOM-killed inside its cgroup.
//!
//! Every file read here is untrusted input: each parser takes the file's text and returns
//! `None` for anything it does not understand (missing, garbage, `max`), never panics.

use std::path::{Path, PathBuf};

/// Where the cgroup v2 hierarchy is usually mounted.
const V2_ROOT: &str = "/sys/fs/cgroup";
/// At most this many ancestors are looked at (a path deeper than this is garbage).
const MAX_DEPTH: usize = 64;
/// cgroup v1 writes "no limit" as a huge number (LONG_MAX rounded down to a page); any
/// limit at or above this is treated as none.
const V1_UNLIMITED: u64 = 1 << 62;

/// The cgroup's memory limit and what the cgroup uses now, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    /// The limit (`memory.max`, or v1's `memory.limit_in_bytes`).
    pub limit: u64,
    /// In use now (`memory.current`, or v1's `memory.usage_in_bytes`).
    pub usage: u64,
    /// Which file set the limit: `memory.max` or `memory.limit_in_bytes`.
    pub file: &'static str,
}

impl MemoryLimit {
    /// What is left under the limit.
    pub fn left(&self) -> u64 {
        self.limit.saturating_sub(self.usage)
    }
}

/// The process's cgroup: where its v2 directory and v1 controller directories are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cgroup {
    /// The v2 directory of the process's cgroup (unified hierarchy), if any.
    v2: Option<PathBuf>,
    /// Where the v2 hierarchy is mounted: ancestors are looked at up to here.
    v2_mount: PathBuf,
    /// The v1 `cpu` controller's directory, if mounted.
    v1_cpu: Option<PathBuf>,
    /// The v1 `memory` controller's directory, if mounted.
    v1_memory: Option<PathBuf>,
    /// Where the v1 `cpu` controller is mounted.
    v1_cpu_mount: PathBuf,
    /// Where the v1 `memory` controller is mounted.
    v1_memory_mount: PathBuf,
}

impl Cgroup {
    /// Reads /proc/self/cgroup and /proc/self/mountinfo (an empty answer when they are
    /// missing or unreadable).
    pub(crate) fn read() -> Self {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::from_texts(&cgroup, &mountinfo)
    }

    /// The directories named by the texts of /proc/self/cgroup and /proc/self/mountinfo.
    pub(crate) fn from_texts(cgroup: &str, mountinfo: &str) -> Self {
        let mounts = parse_mountinfo(mountinfo);
        let v2_mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .map(|m| (m.root.clone(), m.point.clone()))
            .unwrap_or_else(|| ("/".into(), V2_ROOT.into()));
        let mut found = Cgroup::default();
        for line in cgroup.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(_id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if !path.starts_with('/') {
                continue;
            }
            if controllers.is_empty() {
                found.v2 = join_under(&v2_mount.1, &v2_mount.0, path);
                found.v2_mount = PathBuf::from(&v2_mount.1);
                continue;
            }
            for controller in controllers.split(',') {
                let Some(mount) = mounts.iter().find(|m| {
                    m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == controller)
                }) else {
                    continue;
                };
                let dir = join_under(&mount.point, &mount.root, path);
                match controller {
                    "cpu" => (found.v1_cpu, found.v1_cpu_mount) = (dir, mount.point.clone().into()),
                    "memory" => {
                        (found.v1_memory, found.v1_memory_mount) = (dir, mount.point.clone().into())
                    }
                    _ => {}
                }
            }
        }
        found
    }

    /// The CPU quota in CPUs (`1.5`: one and a half CPUs' worth of time per period), the
    /// smallest along the way to the root; `None` when unlimited or unknown.
    pub(crate) fn cpu_quota(&self) -> Option<f64> {
        if let Some(dir) = &self.v2 {
            let quota = ancestors(dir, &self.v2_mount)
                .filter_map(|d| read(&d.join("cpu.max")).as_deref().and_then(parse_cpu_max))
                .reduce(f64::min);
            if quota.is_some() {
                return quota;
            }
        }
        let dir = self.v1_cpu.as_ref()?;
        ancestors(dir, &self.v1_cpu_mount)
            .filter_map(|d| {
                let quota = read(&d.join("cpu.cfs_quota_us"))?;
                let period = read(&d.join("cpu.cfs_period_us"))?;
                parse_cfs(&quota, &period)
            })
            .reduce(f64::min)
    }

    /// The tightest memory limit along the way to the root (the one leaving the least),
    /// with its cgroup's usage; `None` when unlimited or unknown.
    pub(crate) fn memory_limit(&self) -> Option<MemoryLimit> {
        let v2 = self
            .v2
            .as_ref()
            .and_then(|dir| tightest(dir, &self.v2_mount, "memory.max", "memory.current"));
        v2.or_else(|| {
            let dir = self.v1_memory.as_ref()?;
            tightest(
                dir,
                &self.v1_memory_mount,
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        })
    }
}

/// The memory limit in `limit_file` of `dir` or one of its ancestors up to `mount` that
/// leaves the least, with the usage in `usage_file` beside it.
fn tightest(
    dir: &Path,
    mount: &Path,
    limit_file: &'static str,
    usage_file: &str,
) -> Option<MemoryLimit> {
    ancestors(dir, mount)
        .filter_map(|d| {
            let limit = parse_limit(&read(&d.join(limit_file))?)?;
            let usage = read(&d.join(usage_file))
                .as_deref()
                .and_then(parse_u64)
                .unwrap_or(0);
            Some(MemoryLimit {
                limit,
                usage,
                file: limit_file,
            })
        })
        .min_by_key(MemoryLimit::left)
}

/// A file's text, when it can be read (and is small: a cgroup file is a line).
fn read(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    (text.len() <= 4096).then_some(text)
}

/// `dir` and its parents, up to (and including) the `mount` point; `dir` first.
fn ancestors<'a>(dir: &'a Path, mount: &'a Path) -> impl Iterator<Item = &'a Path> {
    dir.ancestors()
        .take(MAX_DEPTH)
        .take_while(move |d| d.starts_with(mount))
}

/// The directory of cgroup `path` under a mount of `root` at `point`: the part of `path`
/// below `root` (a container sees its own cgroup as the mount's root). `None` when `path`
/// is not under `root` or climbs out with `..`.
fn join_under(point: &str, root: &str, path: &str) -> Option<PathBuf> {
    if path.split('/').any(|part| part == "..") {
        return None;
    }
    let rest = if root == "/" {
        path
    } else {
        let rest = path.strip_prefix(root)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest
    };
    let mut dir = PathBuf::from(point);
    for part in rest.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
    }
    Some(dir)
}

/// One line of /proc/self/mountinfo: what matters to find a cgroup controller.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    root: String,
    point: String,
    fstype: String,
    super_options: String,
}

/// The mounts in a /proc/self/mountinfo text; lines that do not parse are skipped.
/// Format: `id parent major:minor root point options [optional…] - fstype source super`.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                root: unescape(left.get(3)?),
                point: unescape(left.get(4)?),
                fstype: right.first()?.to_string(),
                super_options: right.get(2).copied().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\040`-style octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(byte) if byte.is_ascii() => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            _ => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A whole number on one line.
fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A memory limit: bytes, or `max` / a v1 "unlimited" value (`None`).
fn parse_limit(text: &str) -> Option<u64> {
    let limit = parse_u64(text)?;
    (limit < V1_UNLIMITED).then_some(limit)
}

/// cgroup v2 `cpu.max`: `QUOTA PERIOD` in microseconds, or `max PERIOD` (no limit).
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period = fields.next().unwrap_or("100000");
    if fields.next().is_some() {
        return None;
    }
    quota_over_period(quota, period)
}

/// cgroup v1 `cpu.cfs_quota_us` (`-1`: no limit) over `cpu.cfs_period_us`.
fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    quota_over_period(quota.trim(), period.trim())
}

fn quota_over_period(quota: &str, period: &str) -> Option<f64> {
    let quota: u64 = quota.parse().ok()?;
    let period: u64 = period.parse().ok()?;
    if quota == 0 || period == 0 {
        return None;
    }
    Some(quota as f64 / period as f64)
}

/// The CPUs in a kernel CPU list such as `0-3,8,10-11` (/sys/devices/system/cpu/online);
/// `None` for garbage.
pub(crate) fn parse_cpu_list(text: &str) -> Option<usize> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut count = 0usize;
    for part in text.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<usize>().ok()?, hi.parse::<usize>().ok()?),
            None => {
                let cpu = part.parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        if hi < lo || hi - lo >= 1 << 20 {
            return None;
        }
        count = count.checked_add(hi - lo + 1)?;
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_V2: &str = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
29 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";
    const MOUNTINFO_V1: &str = "\
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:10 - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:11 - cgroup cgroup rw,cpu,cpuacct
32 25 0:29 /docker/abc /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";

    #[test]
    fn v2_finds_the_unified_directory() {
        let cg = Cgroup::from_texts("0::/user.slice/session-1.scope\n", MOUNTINFO_V2);
        assert_eq!(
            cg.v2.as_deref(),
            Some(Path::new("/sys/fs/cgroup/user.slice/session-1.scope"))
        );
        assert_eq!(cg.v1_memory, None);
        // No mountinfo: the usual mount point.
        let cg = Cgroup::from_texts("0::/\n", "");
        assert_eq!(cg.v2.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert_eq!(cg.v2_mount, Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn v1_finds_each_controller_under_its_mount() {
        let cg = Cgroup::from_texts(
            "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n3:pids:/docker/abc\n",
            MOUNTINFO_V1,
        );
        assert_eq!(
            cg.v1_memory.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory/docker/abc"))
        );
        assert_eq!(
            cg.v1_cpu.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct/docker/abc"))
        );
        assert_eq!(cg.v2, None);
    }

    #[test]
    fn a_container_root_is_stripped_and_escapes_refused() {
        assert_eq!(
            join_under("/sys/fs/cgroup/pids", "/docker/abc", "/docker/abc/x"),
            Some(PathBuf::from("/sys/fs/cgroup/pids/x"))
        );
        assert_eq!(
            join_under("/sys/fs/cgroup/pids", "/docker/abc", "/docker/abcdef"),
            None
        );
        assert_eq!(join_under("/sys/fs/cgroup", "/", "/a/../../etc"), None);
    }

    #[test]
    fn garbage_and_missing_files_give_nothing() {
        let cg = Cgroup::from_texts("garbage\n\n::\n7:memory:relative\n", "nonsense - -\n");
        assert_eq!(cg, Cgroup::default());
        let cg = Cgroup::from_texts("", "");
        assert_eq!(cg, Cgroup::default());
        assert_eq!(cg.memory_limit(), None);
        assert_eq!(cg.cpu_quota(), None);
        assert_eq!(unescape("/a\\040b\\"), "/a b\\");
        assert_eq!(unescape("\\9zz"), "\\9zz");
    }

    #[test]
    fn cpu_quotas_parse_in_both_versions() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("50000"), Some(0.5));
        assert_eq!(parse_cpu_max("0 100000"), None);
        assert_eq!(parse_cpu_max("1 2 3"), None);
        assert_eq!(parse_cpu_max("abc 100000"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cfs("200000\n", "100000\n"), Some(2.0));
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("100000", "0"), None);
    }

    #[test]
    fn memory_limits_parse_in_both_versions() {
        assert_eq!(parse_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("-5"), None);
        assert_eq!(parse_limit("12 MB"), None);
        assert_eq!(parse_u64(" 42\n"), Some(42));
        let m = MemoryLimit {
            limit: 100,
            usage: 150,
            file: "memory.max",
        };
        assert_eq!(m.left(), 0);
    }

    #[test]
    fn cpu_lists_count_their_cpus() {
        assert_eq!(parse_cpu_list("0-3\n"), Some(4));
        assert_eq!(parse_cpu_list("0-1,4,6-7"), Some(5));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a-b"), None);
        assert_eq!(parse_cpu_list("0-99999999999"), None);
    }

    #[test]
    fn this_machine_reads_without_panicking() {
        let cg = Cgroup::read();
        let _ = (cg.cpu_quota(), cg.memory_limit());
    }
}

//! procpool follows the limits a container or a shell puts on it: the CPU affinity mask
//! (`taskset`), the cgroup's CPU quota and memory limit, and `PROCPOOL_WORKERS`; and it says
//! in the report which of them decided the worker count.
//!
//! The cgroup test needs a writable cgroup hierarchy (root in a VM or a privileged
//! container); where there is none it prints why and passes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{EXIT_OK, EXIT_USAGE, Procpool, wait_until};

fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn has_command(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

#[test]
fn under_taskset_one_cpu_is_effective_and_the_report_says_why() {
    if !has_command("taskset") {
        println!("skipped: no `taskset` on PATH");
        return;
    }
    let out = Procpool::wrapped(&["taskset", "-c", "0"], &["squares", "1e5", "--json"]).run();
    out.assert_code(EXIT_OK);
    let r = out.json();
    let m = &r["machine"];
    assert_eq!(m["cpus_allowed"], 1, "{m}");
    assert_eq!(m["cpus_effective"], 1, "{m}");
    assert_eq!(r["cores_logical"], 1);
    assert_eq!(r["workers"], 1, "one worker per effective CPU");
    assert_eq!(r["workers_from"], "cpus");
    let why = m["cores_decided_by"].as_str().unwrap_or_default();
    if online_cpus() > 1 || m["cpus_online"].as_u64() > Some(1) {
        assert!(why.starts_with("affinity 1 of "), "{why}");
        assert!(why.ends_with("→ 1 CPU"), "{why}");
    }

    let out = Procpool::wrapped(&["taskset", "-c", "0"], &["squares", "1e5"]).run();
    out.assert_code(EXIT_OK);
    let header = out.stdout.lines().next().unwrap_or_default();
    assert!(header.contains("on 1 worker process "), "{header}");
    assert!(!header.contains("logical"), "{header}");
    assert!(
        !header.contains("1 workers") && !header.contains("1 CPUs"),
        "{header}"
    );
    if m["cpus_online"].as_u64() > Some(1) {
        assert!(
            header.contains(", affinity 1 of them → 1 worker"),
            "{header}"
        );
    }
}

#[test]
fn procpool_workers_sets_the_default_and_workers_overrides_it() {
    let out = Procpool::new(&["squares", "1e5", "--json"])
        .env("PROCPOOL_WORKERS", "1")
        .run();
    out.assert_code(EXIT_OK);
    let r = out.json();
    assert_eq!(r["workers"], 1);
    assert_eq!(r["workers_from"], "env");
    assert_eq!(r["verified"], true);

    let out = Procpool::new(&["squares", "1e5"])
        .env("PROCPOOL_WORKERS", "3")
        .run();
    out.assert_code(EXIT_OK);
    let header = out.stdout.lines().next().unwrap_or_default();
    assert!(
        header.contains("3 workers from PROCPOOL_WORKERS"),
        "{header}"
    );

    for bad in ["0", "abc", "", "-2"] {
        let out = Procpool::new(&["squares", "1e5"])
            .env("PROCPOOL_WORKERS", bad)
            .run();
        out.assert_code(EXIT_USAGE);
        let line = out.one_line_error();
        assert!(line.contains("PROCPOOL_WORKERS"), "{line}");
        assert!(line.contains("at least 1"), "{line}");
        assert!(out.stdout.is_empty(), "nothing ran: {}", out.stdout);
    }

    // --workers wins, and a bad variable is then never read.
    let out = Procpool::new(&["--workers", "2", "squares", "1e5", "--json"])
        .env("PROCPOOL_WORKERS", "abc")
        .run();
    out.assert_code(EXIT_OK);
    let r = out.json();
    assert_eq!(r["workers"], 2);
    assert_eq!(r["workers_from"], "given");

    // The sweep's default worker count follows it too.
    let out = Procpool::new(&["sweep", "squares", "1e4", "--json"])
        .env("PROCPOOL_WORKERS", "1")
        .run();
    out.assert_code(EXIT_OK);
    assert_eq!(out.json()["rows"][0]["workers"], 1);
}

/// A child cgroup (v1 or v2) of this process's own, removed (after its processes are gone)
/// when dropped.
struct ChildCgroup {
    dir: PathBuf,
}

impl ChildCgroup {
    /// Creates `name` under this process's cgroup of `controller` (v1) or its unified
    /// cgroup (v2, `controller` enabled), or says why it cannot.
    fn create(controller: &str, name: &str) -> Result<Self, String> {
        let parent = own_cgroup_dir(controller)?;
        let dir = parent.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(ChildCgroup { dir })
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let path = self.dir.join(file);
        std::fs::write(&path, value).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// A `sh` prefix that moves itself into this cgroup, then executes procpool.
    fn prefix(&self) -> Vec<String> {
        vec![
            "sh".into(),
            "-c".into(),
            r#"echo $$ > "$0/cgroup.procs" && exec "$@""#.into(),
            self.dir.display().to_string(),
        ]
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let procs = self.dir.join("cgroup.procs");
        wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&procs).map_or(true, |s| s.trim().is_empty())
        });
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// This process's cgroup directory for `controller`: v1's controller mount, or the v2
/// unified hierarchy when the controller is enabled there.
fn own_cgroup_dir(controller: &str) -> Result<PathBuf, String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("no /proc/self/cgroup: {e}"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("no /proc/self/mountinfo: {e}"))?;
    for line in cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let v1 = controllers.split(',').any(|c| c == controller);
        let v2 = controllers.is_empty();
        if !v1 && !v2 {
            continue;
        }
        for m in mountinfo.lines() {
            let Some((left, right)) = m.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(root), Some(point)) = (left.get(3), left.get(4)) else {
                continue;
            };
            let fits = match right.first() {
                Some(&"cgroup") if v1 => right
                    .get(2)
                    .is_some_and(|o| o.split(',').any(|c| c == controller)),
                Some(&"cgroup2") if v2 => {
                    let enabled = std::fs::read_to_string(
                        Path::new(point)
                            .join(path.trim_start_matches('/'))
                            .join("cgroup.subtree_control"),
                    )
                    .unwrap_or_default();
                    enabled.split_whitespace().any(|c| c == controller)
                }
                _ => false,
            };
            if fits && *root == "/" {
                return Ok(Path::new(point).join(path.trim_start_matches('/')));
            }
        }
    }
    Err(format!(
        "no writable cgroup with the {controller} controller for this process"
    ))
}

fn memory_limit_file(dir: &Path) -> &'static str {
    if dir.join("memory.max").exists() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    }
}

#[test]
fn a_cgroup_memory_limit_is_checked_and_named() {
    let name = format!("procpool-test-mem-{}", std::process::id());
    let cgroup = match ChildCgroup::create("memory", &name) {
        Ok(cgroup) => cgroup,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let file = memory_limit_file(&cgroup.dir);
    if let Err(why) = cgroup.write(file, &(256u64 << 20).to_string()) {
        println!("skipped: {why}");
        return;
    }
    let prefix = cgroup.prefix();
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();

    // A job that fits runs, and the report shows the limit.
    let out = Procpool::wrapped(&prefix, &["--workers", "2", "squares", "1e5", "--json"]).run();
    out.assert_code(EXIT_OK);
    let m = &out.json()["machine"];
    assert_eq!(m["cgroup_memory_limit_bytes"], 256u64 << 20, "{m}");
    assert!(m["cgroup_memory_usage_bytes"].as_u64().is_some(), "{m}");

    // 1e8 squares need 1.5 GiB: refused up front, naming the cgroup's limit, not killed.
    let out = Procpool::wrapped(&prefix, &["--workers", "2", "squares", "1e8"]).run();
    out.assert_code(EXIT_USAGE);
    let line = out.one_line_error();
    assert!(
        line.contains(&format!("cgroup memory limit ({file}) is 256 MiB")),
        "{line}"
    );
    assert!(line.contains("use a smaller n"), "{line}");
}

#[test]
fn a_cgroup_cpu_quota_decides_the_workers() {
    let name = format!("procpool-test-cpu-{}", std::process::id());
    let cgroup = match ChildCgroup::create("cpu", &name) {
        Ok(cgroup) => cgroup,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let written = if cgroup.dir.join("cpu.max").exists() {
        cgroup.write("cpu.max", "150000 100000")
    } else {
        cgroup
            .write("cpu.cfs_period_us", "100000")
            .and_then(|()| cgroup.write("cpu.cfs_quota_us", "150000"))
    };
    if let Err(why) = written {
        println!("skipped: {why}");
        return;
    }
    let prefix = cgroup.prefix();
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let out = Procpool::wrapped(&prefix, &["squares", "1e5", "--json"]).run();
    out.assert_code(EXIT_OK);
    let r = out.json();
    let m = &r["machine"];
    assert_eq!(m["cpu_quota"], 1.5, "{m}");
    assert_eq!(m["cpus_effective"], 1, "{m}");
    assert_eq!(r["workers"], 1);
    let why = m["cores_decided_by"].as_str().unwrap_or_default();
    assert!(why.contains("quota 1.5 → 1 CPU"), "{why}");
}

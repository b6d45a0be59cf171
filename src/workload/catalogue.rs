//! The built-in workloads described for people: what `procpool list` prints.
//!
//! One [`Entry`] per workload registered by [`Registry::builtin`](super::Registry::builtin),
//! in the order a tutorial would take them: memory-bound, then CPU-bound from unbalanced to
//! uniform, then granularity, then I/O-bound.

/// How one built-in workload is invoked and what it demonstrates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The workload's registered name, its `Workload::NAME`.
    pub name: &'static str,
    /// Its command-line arguments after the name, e.g. `"N [--rounds R]"`.
    pub args: &'static str,
    /// The element type written per index, e.g. `"u64"`.
    pub output: &'static str,
    /// What limits its speed, e.g. `"CPU-bound, uniform"`.
    pub bound: &'static str,
    /// One short sentence on what running it in parallel shows.
    pub shows: &'static str,
}

/// Every built-in workload, in presentation order.
pub const CATALOGUE: &[Entry] = &[
    Entry {
        name: "squares",
        args: "N",
        output: "u64",
        bound: "memory-bound",
        shows: "almost no arithmetic per byte: page faults and memory bandwidth cap the speedup",
    },
    Entry {
        name: "primes",
        args: "N",
        output: "u8",
        bound: "CPU-bound, unbalanced",
        shows: "trial division: cost grows with i, so a static split leaves the first workers idle",
    },
    Entry {
        name: "collatz",
        args: "N",
        output: "u32",
        bound: "CPU-bound, irregular",
        shows: "step counts jump between neighbours, so small chunks even out unpredictable cost",
    },
    Entry {
        name: "mandelbrot",
        args: "N [--max-iter K] [--image FILE.png]",
        output: "u32",
        bound: "CPU-bound, irregular by row",
        shows: "N×N pixels; rows through the set cost far more than rows outside it",
    },
    Entry {
        name: "hash",
        args: "N [--rounds R]",
        output: "u64",
        bound: "CPU-bound, uniform",
        shows: "every element costs the same, the best case for a static split",
    },
    Entry {
        name: "spin",
        args: "N --us X",
        output: "u64",
        bound: "CPU-bound, granularity",
        shows: "task granularity against IPC cost: how small a chunk can be before messages dominate",
    },
    Entry {
        name: "sleep",
        args: "N --ms X",
        output: "u64",
        bound: "I/O-bound",
        shows: "waiting, not computing: more workers than cores still help",
    },
];

#[cfg(test)]
mod tests {
    use super::super::{
        Collatz, Hash, Mandelbrot, Primes, Registry, Sleep, Spin, Squares, Workload,
    };
    use super::*;

    const NAMES: [&str; 7] = [
        Squares::NAME,
        Primes::NAME,
        Collatz::NAME,
        Mandelbrot::NAME,
        Hash::NAME,
        Spin::NAME,
        Sleep::NAME,
    ];

    #[test]
    fn catalogue_lists_the_builtins_in_order() {
        let names: Vec<_> = CATALOGUE.iter().map(|e| e.name).collect();
        assert_eq!(names, NAMES);
    }

    #[test]
    fn catalogue_and_builtin_registry_hold_the_same_names() {
        let reg = Registry::builtin();
        for e in CATALOGUE {
            assert!(reg.contains(e.name), "`{}` is not registered", e.name);
        }
        for name in NAMES {
            assert!(reg.contains(name), "`{name}` is not registered");
        }
        // Every registered built-in must be in the catalogue.
        let registered = reg.names();
        assert_eq!(registered.len(), CATALOGUE.len(), "{registered:?}");
        for name in registered {
            assert!(
                CATALOGUE.iter().any(|e| e.name == name),
                "`{name}` is registered but missing from the catalogue"
            );
        }
    }
}

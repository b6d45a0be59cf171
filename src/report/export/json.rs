//! The sweep as JSON: the whole [`SweepTable`], pretty-printed, for programs.

use super::Exporter;
use crate::lab::sweep::SweepTable;

/// The whole [`SweepTable`] as one pretty-printed JSON object (times in seconds, missing
/// values as `null`).
pub struct Json;

impl Exporter for Json {
    fn export(&self, table: &SweepTable) -> String {
        let mut s = serde_json::to_string_pretty(table).expect("a sweep table always serializes");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::measure::Summary;
    use crate::lab::sweep::SweepRow;

    #[test]
    fn json_snapshot() {
        let pool = Summary {
            mean: 0.5,
            sd: 0.25,
            min: 0.25,
            max: 0.75,
            runs: 2,
        };
        let baseline = Summary {
            mean: 1.0,
            sd: 0.0,
            min: 1.0,
            max: 1.0,
            runs: 1,
        };
        let mut table = SweepTable {
            meta: crate::lab::Meta::sample(),
            workload: "hash".into(),
            n: 100,
            cores_logical: 2,
            baseline_s: Some(baseline),
            rows: vec![
                SweepRow::measured(1, 100, baseline, Some(&baseline), Some(true)),
                SweepRow::measured(2, 50, pool, Some(&baseline), None),
            ],
            amdahl: None,
            oversubscribed_workers: Vec::new(),
        };
        table.fit();
        let expected = r#"{
  "schema_version": 1,
  "procpool_version": "VERSION",
  "started_at": "2026-01-02T03:04:05Z",
  "machine": {
    "kernel": "6.1.0",
    "cpu_model": "Example CPU",
    "cpus_online": 2,
    "cores_physical": 2,
    "cpus_allowed": 2,
    "cpu_quota": null,
    "cpus_effective": 2,
    "cores_decided_by": "2 CPUs, no affinity mask or quota",
    "memory_total_bytes": 8589934592,
    "memory_available_bytes": 4294967296,
    "cgroup_memory_limit_bytes": null,
    "cgroup_memory_usage_bytes": null
  },
  "workload": "hash",
  "n": 100,
  "cores_logical": 2,
  "baseline_s": {
    "mean": 1.0,
    "sd": 0.0,
    "min": 1.0,
    "max": 1.0,
    "runs": 1
  },
  "rows": [
    {
      "workers": 1,
      "chunk_size": 100,
      "pool_s": {
        "mean": 1.0,
        "sd": 0.0,
        "min": 1.0,
        "max": 1.0,
        "runs": 1
      },
      "speedup": {
        "value": 1.0,
        "sd": 0.0
      },
      "efficiency": 1.0,
      "karp_flatt": null,
      "verified": true,
      "fitted": true
    },
    {
      "workers": 2,
      "chunk_size": 50,
      "pool_s": {
        "mean": 0.5,
        "sd": 0.25,
        "min": 0.25,
        "max": 0.75,
        "runs": 2
      },
      "speedup": {
        "value": 2.0,
        "sd": 1.0
      },
      "efficiency": 1.0,
      "karp_flatt": 0.0,
      "verified": null,
      "fitted": true
    }
  ],
  "amdahl": {
    "serial_fraction": 0.0,
    "ceiling": null,
    "rmse": 0.0,
    "points": 2
  },
  "oversubscribed_workers": []
}
"#;
        let expected = expected.replace("VERSION", env!("CARGO_PKG_VERSION"));
        assert_eq!(Json.export(&table), expected);
    }

    #[test]
    fn json_round_trips_the_sample_table() {
        let table = crate::lab::sweep::sample_table();
        let value: serde_json::Value = serde_json::from_str(&Json.export(&table)).unwrap();
        assert_eq!(value, serde_json::to_value(&table).unwrap());
        assert_eq!(value["rows"].as_array().unwrap().len(), 4);
    }
}

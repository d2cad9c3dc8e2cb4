//! `/metrics`: the state's totals in the Prometheus text format (version 0.0.4).

use std::fmt::Write;

use super::state::Metrics;

/// The content type of the answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders `m` as Prometheus text.
pub fn render(m: &Metrics) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    family(
        "rafi_nodes",
        "gauge",
        "Registered nodes by state.",
        &[
            ("{state=\"up\"}".into(), m.nodes_up as f64),
            ("{state=\"down\"}".into(), m.nodes_down as f64),
        ],
    );
    family(
        "rafi_cores",
        "gauge",
        "Spare cores of up nodes: free, or leased by active leases.",
        &[
            ("{state=\"free\"}".into(), m.cores_free as f64),
            ("{state=\"leased\"}".into(), m.cores_leased as f64),
        ],
    );
    family(
        "rafi_memory_mib",
        "gauge",
        "Leasable memory of up nodes in MiB: free, or leased.",
        &[
            ("{state=\"free\"}".into(), m.memory_free_mib as f64),
            ("{state=\"leased\"}".into(), m.memory_leased_mib as f64),
        ],
    );
    family(
        "rafi_gpus",
        "gauge",
        "Leasable GPUs of up nodes: free, or leased.",
        &[
            ("{state=\"free\"}".into(), m.gpus_free as f64),
            ("{state=\"leased\"}".into(), m.gpus_leased as f64),
        ],
    );
    family(
        "rafi_leases_active",
        "gauge",
        "Active leases.",
        &one(m.leases_active as f64),
    );
    family(
        "rafi_lease_grants_total",
        "counter",
        "Leases granted.",
        &one(m.lease_grants as f64),
    );
    family(
        "rafi_lease_refusals_total",
        "counter",
        "Lease requests refused for lack of free resources.",
        &one(m.lease_refusals as f64),
    );
    let per_client = |f: &dyn Fn(&super::state::ClientUsage) -> f64| -> Vec<(String, f64)> {
        m.usage_by_client
            .iter()
            .map(|(client, u)| (format!("{{client=\"{}\"}}", escape(client)), f(u)))
            .collect()
    };
    family(
        "rafi_usage_core_seconds_total",
        "counter",
        "Cores times leased time, per client.",
        &per_client(&|u| u.core_seconds),
    );
    family(
        "rafi_usage_busy_seconds_total",
        "counter",
        "Time workers ran functions, per client.",
        &per_client(&|u| u.busy_ns as f64 / 1e9),
    );
    family(
        "rafi_usage_hot_seconds_total",
        "counter",
        "Time workers polled hot, per client.",
        &per_client(&|u| u.hot_ns as f64 / 1e9),
    );
    family(
        "rafi_usage_invocations_total",
        "counter",
        "Invocations, per client.",
        &per_client(&|u| u.invocations as f64),
    );
    out
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::resource::state::ClientUsage;

    #[test]
    fn renders_families_with_escaped_labels() {
        let mut m = Metrics {
            nodes_up: 2,
            lease_grants: 3,
            ..Metrics::default()
        };
        m.usage_by_client.insert(
            "a\"b".into(),
            ClientUsage {
                core_seconds: 1.5,
                busy_ns: 2_000_000_000,
                hot_ns: 0,
                invocations: 4,
            },
        );
        let text = render(&m);
        assert!(text.contains("rafi_nodes{state=\"up\"} 2\n"), "{text}");
        assert!(text.contains("rafi_lease_grants_total 3\n"));
        assert!(text.contains("rafi_usage_core_seconds_total{client=\"a\\\"b\"} 1.5\n"));
        assert!(text.contains("rafi_usage_busy_seconds_total{client=\"a\\\"b\"} 2\n"));
    }
}

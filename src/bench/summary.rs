//! The whole comparison of `scripts/bench.sh` as markdown tables with ratios, and its SVG
//! plots, from the JSON lines the script collected.
//!
//! Each input line is a benchmark's JSON object that the script tagged with `key` (which
//! measurement) and `round` (which interleaved round); one line with `"key":"machine"`
//! describes the host. Every ratio is taken between measurements of the same round, and
//! the table shows the median over the rounds (cross-core latency on a shared host moves
//! by factors for minutes at a time; within a round it does not).
//!
//! Keys read (a missing key leaves its cells as "—"):
//!
//! | key | from | rows told apart by |
//! |---|---|---|
//! | `floor-cacheline`, `floor-wake` | `pingpong --baseline` (rdma-mock example) | — |
//! | `pingpong` | `rafi bench pingpong` | `size` |
//! | `invoke-hot`, `invoke-hot-noop`, `invoke-warm` | `rafi bench invoke` | `size` |
//! | `cold` | `rafi bench cold` | — |
//! | `throughput` | `rafi bench throughput` | `workers` |
//! | `clients` | `rafi bench clients` | `clients` |
//! | `baseline-mpi`, `baseline-tcp`, `baseline-grpc` | `benches/baselines` | `size` |

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::plot::{Axis, Plot, Scale, Series, Units};

/// Where the generated section of a markdown file starts and ends.
pub const BEGIN_MARK: &str = "<!-- bench.sh:begin -->";
pub const END_MARK: &str = "<!-- bench.sh:end -->";

/// The hot-invocation target against Open MPI's ping-pong: rafi / MPI p50 at most this.
pub const MPI_TARGET: f64 = 1.0;
/// gRPC unary p50 / rafi p50 at least this.
pub const GRPC_TARGET: f64 = 100.0;
/// Pipelined no-op invocations per second per worker core, at least.
pub const PER_WORKER_TARGET: f64 = 2e6;
/// Throughput with N workers at least this × N × one worker's.
pub const SCALING_TARGET: f64 = 0.8;
/// Worker counts the scaling table always lists (measured or not).
pub const SCALING_WORKERS: [u64; 5] = [1, 2, 4, 8, 14];

/// Reading the results failed.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("line {line}: not a JSON object: {reason}")]
    BadLine { line: usize, reason: String },
    #[error("line {line}: no \"{field}\" field")]
    MissingField { line: usize, field: &'static str },
    #[error("the markdown file has no '{BEGIN_MARK}' … '{END_MARK}' section (add both markers, in that order, where the results go)")]
    NoSection,
}

/// The collected results.
#[derive(Debug, Clone, Default)]
pub struct Results {
    rows: Vec<Map<String, Value>>,
    machine: Map<String, Value>,
    rounds: BTreeSet<u64>,
}

impl Results {
    /// Parses JSON lines (blank lines are skipped).
    ///
    /// # Errors
    /// A line that is not a JSON object, or lacks `key` or (except the machine line)
    /// `round`.
    pub fn parse(text: &str) -> Result<Self, SummaryError> {
        let mut r = Results::default();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).map_err(|e| SummaryError::BadLine {
                line: line_no,
                reason: e.to_string(),
            })?;
            let Value::Object(obj) = v else {
                return Err(SummaryError::BadLine {
                    line: line_no,
                    reason: "not an object".into(),
                });
            };
            let key = obj
                .get("key")
                .and_then(Value::as_str)
                .ok_or(SummaryError::MissingField {
                    line: line_no,
                    field: "key",
                })?;
            if key == "machine" {
                r.machine = obj;
                continue;
            }
            let round =
                obj.get("round")
                    .and_then(Value::as_u64)
                    .ok_or(SummaryError::MissingField {
                        line: line_no,
                        field: "round",
                    })?;
            r.rounds.insert(round);
            r.rows.push(obj);
        }
        Ok(r)
    }

    /// The row of `key` in `round` whose field `by` is `value` (any row when `by` is None).
    fn row(&self, round: u64, key: &str, by: Option<(&str, u64)>) -> Option<&Map<String, Value>> {
        self.rows.iter().find(|r| {
            r.get("round").and_then(Value::as_u64) == Some(round)
                && r.get("key").and_then(Value::as_str) == Some(key)
                && by.is_none_or_eq(r)
        })
    }

    fn field(&self, round: u64, key: &str, by: Option<(&str, u64)>, field: &str) -> Option<f64> {
        self.row(round, key, by)?.get(field)?.as_f64()
    }

    /// The median over rounds of `f(round)`, over the rounds where it has a value.
    fn median_of(&self, f: impl Fn(u64) -> Option<f64>) -> Option<f64> {
        median(self.rounds.iter().filter_map(|&r| f(r)).collect())
    }

    /// The median p50 of a measurement.
    fn p50(&self, key: &str, by: Option<(&str, u64)>) -> Option<f64> {
        self.median_of(|r| self.field(r, key, by, "p50_ns"))
    }

    /// The median over rounds of `num`'s field / `den`'s field within each round.
    fn ratio(
        &self,
        num: (&str, Option<(&str, u64)>),
        den: (&str, Option<(&str, u64)>),
        field: &str,
    ) -> Option<f64> {
        self.median_of(|r| {
            let n = self.field(r, num.0, num.1, field)?;
            let d = self.field(r, den.0, den.1, field)?;
            (d > 0.0).then_some(n / d)
        })
    }

    /// The values of field `by` that rows of `key` have, sorted.
    fn values_of(&self, key: &str, by: &str) -> Vec<u64> {
        let set: BTreeSet<u64> = self
            .rows
            .iter()
            .filter(|r| r.get("key").and_then(Value::as_str) == Some(key))
            .filter_map(|r| r.get(by)?.as_u64())
            .collect();
        set.into_iter().collect()
    }

    fn has(&self, key: &str) -> bool {
        self.rows
            .iter()
            .any(|r| r.get("key").and_then(Value::as_str) == Some(key))
    }

    fn machine_str(&self, field: &str) -> String {
        match self.machine.get(field) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => "unknown".into(),
        }
    }

    /// The markdown section (without the markers).
    pub fn markdown(&self, plots_link: Option<&str>) -> String {
        let mut s = String::new();
        self.machine_table(&mut s);
        self.peers_table(&mut s);
        self.sweep_table(&mut s);
        self.warm_cold_table(&mut s);
        self.throughput_table(&mut s);
        self.clients_table(&mut s);
        rfaas_table(&mut s);
        if let Some(dir) = plots_link {
            let _ = writeln!(s, "### Plots\n");
            for (name, plot) in self.plots() {
                let _ = writeln!(s, "![{}]({dir}/{name})\n", plot.title);
            }
        }
        s
    }

    fn machine_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "Generated by `scripts/bench.sh` ({} round(s), every ratio taken within a round, \
             the median over rounds shown). Edit outside the markers; this section is \
             rewritten.\n",
            self.rounds.len()
        );
        let _ = writeln!(s, "| machine | |\n|---|---|");
        for (label, field) in [
            ("CPU model (`lscpu`)", "cpu_model"),
            ("cores", "cores"),
            ("kernel", "kernel"),
            ("date (UTC)", "date"),
            ("commit", "commit"),
            ("cores used", "cpus"),
            ("options", "options"),
        ] {
            let _ = writeln!(s, "| {label} | {} |", self.machine_str(field));
        }
        s.push('\n');
    }

    fn peers_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "### Hot invocation against the peers (p50, ns)\n\n\
             rafi: `rafi bench invoke --mode hot` (one worker spinning); Open MPI: \
             `baseline-mpi --op pingpong` (two ranks, shared memory); TCP: `baseline-tcp` \
             request/response; gRPC: `baseline-grpc` unary. The no-op is compared with the \
             peers' 1-byte exchange.\n"
        );
        if !self.has("baseline-mpi") && !self.has("baseline-grpc") {
            let _ = writeln!(
                s,
                "Peer baselines: **skipped** in this run (`--skip-baselines`, or not built).\n"
            );
        }
        let _ = writeln!(
            s,
            "| invocation | rafi | raw ping-pong | Open MPI | rafi / MPI (≤ {MPI_TARGET}) | TCP | gRPC | gRPC / rafi (≥ {GRPC_TARGET}) |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (label, key, size, peer_size) in [
            ("rafi.noop, empty", "invoke-hot-noop", 0u64, 1u64),
            ("rafi.echo 8 B", "invoke-hot", 8, 8),
            ("rafi.echo 64 B", "invoke-hot", 64, 64),
        ] {
            let me = (key, Some(("size", size)));
            let peer = |k| (k, Some(("size", peer_size)));
            let to_mpi = self.ratio(me, peer("baseline-mpi"), "p50_ns");
            let grpc = self.ratio(peer("baseline-grpc"), me, "p50_ns");
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} | {} | {} |",
                ns(self.p50(me.0, me.1)),
                ns(self.p50("pingpong", Some(("size", peer_size)))),
                ns(self.p50("baseline-mpi", Some(("size", peer_size)))),
                verdict(to_mpi, |r| r <= MPI_TARGET),
                ns(self.p50("baseline-tcp", Some(("size", peer_size)))),
                ns(self.p50("baseline-grpc", Some(("size", peer_size)))),
                verdict(grpc, |r| r >= GRPC_TARGET),
            );
        }
        s.push('\n');
    }

    fn sweep_table(&self, s: &mut String) {
        let sizes = self.values_of("invoke-hot", "size");
        if sizes.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "### Payload sweep (rafi.echo, size bytes each way; p50, ns)\n\n\
             \"registered\": the input sent from registered input memory (`invoke_from`, \
             `--registered`) instead of copied into the request slot.\n\n\
             | size | rafi hot | rafi hot, registered | raw ping-pong | rafi / ping-pong | Open MPI | rafi / MPI | registered / MPI | TCP | gRPC |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for size in sizes {
            let by = Some(("size", size));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                super::plot::format_value(size as f64, Units::Bytes),
                ns(self.p50("invoke-hot", by)),
                ns(self.p50("invoke-registered", by)),
                ns(self.p50("pingpong", by)),
                ratio(self.ratio(("invoke-hot", by), ("pingpong", by), "p50_ns")),
                ns(self.p50("baseline-mpi", by)),
                ratio(self.ratio(("invoke-hot", by), ("baseline-mpi", by), "p50_ns")),
                ratio(self.ratio(("invoke-registered", by), ("baseline-mpi", by), "p50_ns")),
                ns(self.p50("baseline-tcp", by)),
                ns(self.p50("baseline-grpc", by)),
            );
        }
        s.push('\n');
    }

    fn warm_cold_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "### Warm and cold\n\n| measurement | p50 | ratio | target |\n|---|---:|---:|---|"
        );
        let _ = writeln!(
            s,
            "| cache-line ping-pong (floor) | {} | 1.00 | |",
            ns(self.p50("floor-cacheline", None))
        );
        let _ = writeln!(
            s,
            "| eventfd wake of a sleeping peer (floor) | {} | 1.00 | |",
            ns(self.p50("floor-wake", None))
        );
        let warm = self.ratio(("invoke-warm", None), ("floor-wake", None), "p50_ns");
        let _ = writeln!(
            s,
            "| warm invocation, 64 B (worker asleep) | {} | {} | ≤ 1.5 × wake |",
            ns(self.p50("invoke-warm", None)),
            verdict_in(warm, " × wake", |r| r <= 1.5)
        );
        let cold = self.p50("cold", None);
        let _ = writeln!(
            s,
            "| cold start: lease, spawn, connect, first result | {} | {} | < 10 ms |",
            ns(cold),
            verdict_in(cold.map(|c| c / 1e6), " ms", |ms| ms < 10.0)
        );
        s.push('\n');
    }

    fn throughput_table(&self, s: &mut String) {
        let cores = self.machine.get("cores").and_then(Value::as_u64);
        let one =
            self.median_of(|r| self.field(r, "throughput", Some(("workers", 1)), "throughput_ops"));
        let depth = self
            .rows
            .iter()
            .find(|r| r.get("key").and_then(Value::as_str) == Some("throughput"))
            .and_then(|r| r.get("depth")?.as_u64());
        let _ = writeln!(
            s,
            "### Throughput (rafi.noop pipelined, {} in flight per worker)\n\n\
             | workers | client threads | invocations/s | per worker | target | result |\n\
             |---:|---:|---:|---:|---|---|",
            depth.map_or("—".into(), |d| d.to_string())
        );
        let mut workers: BTreeSet<u64> = SCALING_WORKERS.into_iter().collect();
        workers.extend(self.values_of("throughput", "workers"));
        for n in workers {
            let ops = self
                .median_of(|r| self.field(r, "throughput", Some(("workers", n)), "throughput_ops"));
            let (target, result) = if n == 1 {
                (
                    format!("≥ {} M/s per worker", PER_WORKER_TARGET / 1e6),
                    verdict_in(ops.map(|o| o / 1e6), " M/s", |m| {
                        m >= PER_WORKER_TARGET / 1e6
                    }),
                )
            } else {
                let scaling = self.median_of(|r| {
                    let n_ops =
                        self.field(r, "throughput", Some(("workers", n)), "throughput_ops")?;
                    let one =
                        self.field(r, "throughput", Some(("workers", 1)), "throughput_ops")?;
                    Some(n_ops / (n as f64 * one))
                });
                let result = match (ops, scaling) {
                    (Some(_), Some(_)) => {
                        format!("{} of N × one worker", verdict(scaling, |x| x >= SCALING_TARGET))
                    }
                    (Some(_), None) => "no one-worker run to compare".into(),
                    _ => match cores {
                        Some(c) if c < n + 1 => format!(
                            "not measured here: {n} workers and the client need {} cores, this machine has {c}",
                            n + 1
                        ),
                        _ => "not measured in this run".into(),
                    },
                };
                (format!("≥ {SCALING_TARGET} × N × one worker"), result)
            };
            // Runs before client threads existed had one.
            let threads = self
                .rounds
                .iter()
                .find_map(|&r| self.row(r, "throughput", Some(("workers", n))))
                .map_or("—".into(), |r| {
                    r.get("client_threads")
                        .and_then(Value::as_u64)
                        .unwrap_or(1)
                        .to_string()
                });
            let _ = writeln!(
                s,
                "| {n} | {threads} | {} | {} | {target} | {result} |",
                rate(ops),
                rate(ops.map(|o| o / n as f64)),
            );
        }
        if one.is_none() {
            let _ = writeln!(s, "\n(no throughput run in this input)");
        }
        s.push('\n');
    }

    fn clients_table(&self, s: &mut String) {
        let counts = self.values_of("clients", "clients");
        if counts.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "### Concurrent clients (rafi.noop, one call in flight per client, one executor)\n\n\
             | clients | p50 | p99 | all clients, invocations/s | executor workers | clients wait |\n\
             |---:|---:|---:|---:|---:|---|"
        );
        for n in counts {
            let by = Some(("clients", n));
            let row = self.rounds.iter().find_map(|&r| self.row(r, "clients", by));
            let get = |f: &str| row.and_then(|r| r.get(f)).map(|v| v.to_string());
            let _ = writeln!(
                s,
                "| {n} | {} | {} | {} | {} | {} |",
                ns(self.p50("clients", by)),
                ns(self.median_of(|r| self.field(r, "clients", by, "p99_ns"))),
                rate(self.median_of(|r| self.field(r, "clients", by, "throughput_ops"))),
                get("workers").unwrap_or_else(|| "—".into()),
                get("client_wait")
                    .map(|w| w.trim_matches('"').to_string())
                    .unwrap_or_else(|| "—".into()),
            );
        }
        s.push('\n');
    }

    /// The plots: latency against payload, throughput against workers, latency CDFs.
    pub fn plots(&self) -> Vec<(String, Plot)> {
        let mut out = Vec::new();
        let mut sweep = Plot::new(
            "Round-trip latency against payload (p50)",
            Axis::new("payload each way (bytes)", Scale::Log, Units::Bytes),
            Axis::new("p50 latency", Scale::Log, Units::Nanos),
        );
        for (label, key) in [
            ("rafi hot invocation (echo)", "invoke-hot"),
            ("rafi, registered input", "invoke-registered"),
            ("raw fabric ping-pong", "pingpong"),
            ("Open MPI ping-pong", "baseline-mpi"),
            ("TCP request/response", "baseline-tcp"),
            ("gRPC unary", "baseline-grpc"),
        ] {
            let points: Vec<(f64, f64)> = self
                .values_of(key, "size")
                .into_iter()
                .filter_map(|size| Some((size as f64, self.p50(key, Some(("size", size)))?)))
                .collect();
            if !points.is_empty() {
                sweep.series.push(Series::new(label, points));
            }
        }
        out.push(("latency-vs-payload.svg".to_string(), sweep));

        let mut tput = Plot::new(
            "Pipelined rafi.noop throughput against workers",
            Axis::new("executor workers", Scale::Linear, Units::Plain),
            Axis::new("invocations per second", Scale::Linear, Units::Plain),
        );
        let measured: Vec<(f64, f64)> = self
            .values_of("throughput", "workers")
            .into_iter()
            .filter_map(|n| {
                let ops = self.median_of(|r| {
                    self.field(r, "throughput", Some(("workers", n)), "throughput_ops")
                })?;
                Some((n as f64, ops))
            })
            .collect();
        if let Some(&(_, one)) = measured.iter().find(|p| p.0 == 1.0) {
            let max = measured.iter().map(|p| p.0).fold(1.0, f64::max);
            tput.series.push(Series::new(
                &format!("target: {SCALING_TARGET} × N × one worker"),
                vec![
                    (1.0, SCALING_TARGET * one),
                    (max, SCALING_TARGET * max * one),
                ],
            ));
        }
        tput.series.insert(0, Series::new("rafi", measured));
        out.push(("throughput-vs-workers.svg".to_string(), tput));

        let mut cdf = Plot::new(
            "Latency distribution, 64 B (percentiles of the latest round)",
            Axis::new("round-trip latency", Scale::Log, Units::Nanos),
            Axis::new(
                "fraction of calls at or below",
                Scale::Linear,
                Units::Percent,
            ),
        );
        for (label, key) in [
            ("rafi hot invocation", "invoke-hot"),
            ("raw fabric ping-pong", "pingpong"),
            ("Open MPI ping-pong", "baseline-mpi"),
            ("gRPC unary", "baseline-grpc"),
        ] {
            // The latest round that has the percentiles (a peer may print fewer fields).
            let Some(row) = self
                .rounds
                .iter()
                .rev()
                .filter_map(|&r| self.row(r, key, Some(("size", 64))))
                .find(|row| row.contains_key("p99_ns"))
            else {
                continue;
            };
            let points: Vec<(f64, f64)> = [
                ("min_ns", 0.0),
                ("p50_ns", 0.5),
                ("p90_ns", 0.9),
                ("p99_ns", 0.99),
                ("p999_ns", 0.999),
                ("max_ns", 1.0),
            ]
            .into_iter()
            .filter_map(|(f, q)| Some((row.get(f)?.as_f64()?, q)))
            .collect();
            if points.len() >= 2 {
                cdf.series.push(Series::new(label, points));
            }
        }
        out.push(("latency-cdf.svg".to_string(), cdf));
        out
    }
}

/// Whether a row matches an optional `field == value`.
trait MatchBy {
    fn is_none_or_eq(&self, row: &Map<String, Value>) -> bool;
}

impl MatchBy for Option<(&str, u64)> {
    fn is_none_or_eq(&self, row: &Map<String, Value>) -> bool {
        match self {
            None => true,
            Some((field, value)) => row.get(*field).and_then(Value::as_u64) == Some(*value),
        }
    }
}

/// The published rFaaS figures, labelled with their hardware.
fn rfaas_table(s: &mut String) {
    let _ = writeln!(
        s,
        "### rFaaS published figures (their hardware, not this machine)\n\n\
         For reference only: measured by the rFaaS authors (IPDPS 2023/2024) on other \
         hardware; not comparable with the figures above except as orders of magnitude.\n\n\
         | figure | value | hardware |\n|---|---|---|\n\
         | hot invocation, 1 B | 8.09 µs (raw network round trip 7.81 µs: +0.2–0.33 µs) | Piz Daint, Cray Aries |\n\
         | raw RDMA round trip | 3.69 µs | RoCE, ConnectX-5 |\n\
         | warm invocation | ~70 µs, p99 10–14 ms | Piz Daint, Cray Aries |\n\
         | overhead claimed in its README | < 350 ns | — |\n\
         | in flight per worker | 1 | (design) |\n"
    );
}

/// The median; `None` for no values.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn ns(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v >= 1e6 => format!("{:.2} ms", v / 1e6),
        Some(v) if v >= 1e4 => format!("{:.1} µs", v / 1e3),
        Some(v) => format!("{v:.0} ns"),
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map_or("—".into(), |r| format!("{r:.2}"))
}

fn rate(v: Option<f64>) -> String {
    v.map_or("—".into(), |r| format!("{:.2} M", r / 1e6))
}

/// A value with **met** or **missed**, or "—".
fn verdict(v: Option<f64>, ok: impl Fn(f64) -> bool) -> String {
    verdict_in(v, "", ok)
}

/// [`verdict`] with a unit after the value.
fn verdict_in(v: Option<f64>, unit: &str, ok: impl Fn(f64) -> bool) -> String {
    match v {
        None => "—".into(),
        Some(r) if ok(r) => format!("{r:.2}{unit} **met**"),
        Some(r) => format!("{r:.2}{unit} **missed**"),
    }
}

/// `doc` with the text between [`BEGIN_MARK`] and [`END_MARK`] replaced by `section`.
///
/// # Errors
/// [`SummaryError::NoSection`] when the markers are missing or out of order.
pub fn replace_section(doc: &str, section: &str) -> Result<String, SummaryError> {
    let begin = doc.find(BEGIN_MARK).ok_or(SummaryError::NoSection)?;
    let after_begin = begin + BEGIN_MARK.len();
    let end = doc[after_begin..]
        .find(END_MARK)
        .ok_or(SummaryError::NoSection)?
        + after_begin;
    Ok(format!(
        "{}\n\n{}\n{}",
        &doc[..after_begin],
        section.trim_end(),
        &doc[end..]
    ))
}

/// A new markdown file holding only the section.
pub fn new_document(section: &str) -> String {
    format!(
        "# Benchmark results\n\n{BEGIN_MARK}\n\n{}\n{END_MARK}\n",
        section.trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn sections() {
        let doc = format!("intro\n{BEGIN_MARK}\nold\n{END_MARK}\noutro\n");
        let new = replace_section(&doc, "new table\n").unwrap();
        assert_eq!(
            new,
            format!("intro\n{BEGIN_MARK}\n\nnew table\n{END_MARK}\noutro\n")
        );
        // Idempotent: regenerating keeps one section.
        let again = replace_section(&new, "newer").unwrap();
        assert_eq!(again.matches(BEGIN_MARK).count(), 1);
        assert!(again.contains("newer") && !again.contains("new table"));
        assert!(matches!(
            replace_section("no markers", "x"),
            Err(SummaryError::NoSection)
        ));
        assert!(matches!(
            replace_section(&format!("{END_MARK} {BEGIN_MARK}"), "x"),
            Err(SummaryError::NoSection)
        ));
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(matches!(
            Results::parse("{\"key\":\"a\",\"round\":1}\nnot json"),
            Err(SummaryError::BadLine { line: 2, .. })
        ));
        assert!(matches!(
            Results::parse("{\"round\":1}"),
            Err(SummaryError::MissingField { field: "key", .. })
        ));
        assert!(matches!(
            Results::parse("{\"key\":\"pingpong\"}"),
            Err(SummaryError::MissingField { field: "round", .. })
        ));
        assert!(matches!(
            Results::parse("[1]"),
            Err(SummaryError::BadLine { .. })
        ));
    }
}

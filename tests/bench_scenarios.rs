//! `rafi bench throughput`, `clients` and `report`: the scenarios run and print their
//! fields, and the report generator turns a fixed set of results into the tables (ratio
//! arithmetic, medians over rounds, the marked section) and plots. Nothing here checks a
//! speed.

use std::path::PathBuf;
use std::process::{Command, Output};

use rafi::bench::summary::{Results, BEGIN_MARK, END_MARK};

fn rafi(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rafi"))
        .args(args)
        .output()
        .expect("running rafi")
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "rafi failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Two rounds; the ratios are chosen so that each round's ratio differs from the ratio of
/// the medians (the report must take ratios within rounds).
const RESULTS: &str = r#"
{"key":"machine","cpu_model":"Test CPU <x>","cores":2,"kernel":"Linux 6.1","date":"2026-12-02 10:00","commit":"abc1234","cpus":"client 0, executor/responder 1","options":"--quick"}
{"key":"floor-cacheline","round":1,"p50_ns":200}
{"key":"floor-cacheline","round":2,"p50_ns":300}
{"key":"floor-wake","round":1,"p50_ns":40000}
{"key":"invoke-warm","round":1,"size":64,"p50_ns":50000}
{"key":"invoke-hot-noop","round":1,"scenario":"invoke","size":0,"p50_ns":300}
{"key":"invoke-hot-noop","round":2,"scenario":"invoke","size":0,"p50_ns":500}
{"key":"invoke-hot","round":1,"size":64,"p50_ns":600,"min_ns":500,"p90_ns":700,"p99_ns":900,"p999_ns":2000,"max_ns":9000}
{"key":"invoke-hot","round":2,"size":64,"p50_ns":400}
{"key":"invoke-hot","round":1,"size":1048576,"p50_ns":250000}
{"key":"pingpong","round":1,"size":64,"p50_ns":300}
{"key":"pingpong","round":2,"size":64,"p50_ns":400}
{"key":"baseline-mpi","round":1,"fabric":"mpi","size":1,"p50_ns":400}
{"key":"baseline-mpi","round":2,"fabric":"mpi","size":1,"p50_ns":400}
{"key":"baseline-mpi","round":1,"fabric":"mpi","size":64,"p50_ns":500}
{"key":"baseline-mpi","round":2,"fabric":"mpi","size":64,"p50_ns":500}
{"key":"baseline-grpc","round":1,"fabric":"grpc","size":64,"p50_ns":120000}
{"key":"baseline-grpc","round":2,"fabric":"grpc","size":64,"p50_ns":60000}
{"key":"throughput","round":1,"workers":1,"depth":32,"throughput_ops":2500000.0}
{"key":"throughput","round":1,"workers":4,"depth":32,"throughput_ops":8000000.0,"client_threads":4}
{"key":"clients","round":1,"clients":1,"p50_ns":600,"p99_ns":900,"throughput_ops":1500000.0,"workers":1,"client_wait":"spin"}
{"key":"clients","round":1,"clients":2,"p50_ns":700,"p99_ns":1900,"throughput_ops":1200000.0,"workers":1,"client_wait":"sleep"}
{"key":"cold","round":1,"p50_ns":6200000}
"#;

fn row<'a>(md: &'a str, starts: &str) -> &'a str {
    md.lines()
        .find(|l| l.starts_with(starts))
        .unwrap_or_else(|| panic!("no row starting with {starts:?} in:\n{md}"))
}

#[test]
fn report_tables_take_ratios_within_rounds() {
    let md = Results::parse(RESULTS).unwrap().markdown(Some("plots"));
    // 64 B: 600/500 = 1.2 and 400/500 = 0.8, median 1.0; gRPC 120000/600 = 200 and
    // 60000/400 = 150, median 175.
    let echo = row(&md, "| rafi.echo 64 B |");
    assert!(
        echo.contains("| 500 ns |"),
        "median p50 of the two rounds: {echo}"
    );
    assert!(echo.contains("1.00 **met**"), "{echo}");
    assert!(echo.contains("175.00 **met**"), "{echo}");
    // No-op against MPI's 1 B: 0.75 and 1.25, median 1.0.
    assert!(row(&md, "| rafi.noop, empty |").contains("1.00 **met**"));
    // Nothing measured for 8 B: dashes, not zeros.
    assert!(row(&md, "| rafi.echo 8 B |").contains("| — |"));
    // Sweep: 64 B against the raw ping-pong, 600/300 = 2 and 400/400 = 1, median 1.5.
    assert!(row(&md, "| 64 | ").contains("| 1.50 |"), "{md}");
    assert!(row(&md, "| 1M | ").contains("250.0 µs"));
    assert!(row(&md, "| warm invocation").contains("1.25 × wake"));
    assert!(row(&md, "| cold start").contains("6.20 ms **met**"));
    // Lines from before client threads existed had one.
    assert!(row(&md, "| 1 | 1 | 2.50 M |").contains("2.50 M/s **met**"));
    // 8 M / (4 × 2.5 M) = 0.8.
    assert!(
        row(&md, "| 4 | 4 | 8.00 M | 2.00 M |").contains("0.80 **met**"),
        "{md}"
    );
    assert!(row(&md, "| 2 | — |").contains("not measured here"));
    assert!(row(&md, "| 14 | — |").contains("this machine has 2"));
    assert!(row(&md, "| 2 | 700 ns |").contains("sleep"));
    assert!(md.contains("| CPU model (`lscpu`) | Test CPU <x> |"));
    assert!(md.contains("rFaaS published figures"));
    assert!(md.contains("Piz Daint"));
    assert!(
        md.contains("![Round-trip latency against payload (p50)](plots/latency-vs-payload.svg)")
    );
    // Without peers in the input the table says they were skipped.
    let no_peers: String = RESULTS
        .lines()
        .filter(|l| !l.contains("baseline-"))
        .collect::<Vec<_>>()
        .join("\n");
    let md = Results::parse(&no_peers).unwrap().markdown(None);
    assert!(md.contains("**skipped**"));
}

#[test]
fn report_plots_have_their_series() {
    let plots = Results::parse(RESULTS).unwrap().plots();
    let names: Vec<&str> = plots.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "latency-vs-payload.svg",
            "throughput-vs-workers.svg",
            "latency-cdf.svg"
        ]
    );
    let sweep = plots[0].1.to_svg();
    // rafi, raw ping-pong, MPI, gRPC have points; TCP has none and is left out.
    assert_eq!(sweep.matches("<polyline").count(), 4);
    let cdf = plots[2].1.to_svg();
    // Only rafi's 64 B row has percentiles (round 1's; round 2 has a p50 alone).
    assert_eq!(cdf.matches("<polyline").count(), 1);
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rafi-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn report_command_rewrites_only_the_marked_section() {
    let dir = scratch("report");
    let input = dir.join("results.jsonl");
    std::fs::write(&input, RESULTS).unwrap();
    let md = dir.join("perf.md");
    std::fs::write(
        &md,
        format!("# Hand-written\n\nkeep me\n\n{BEGIN_MARK}\nold table\n{END_MARK}\n\nand me\n"),
    )
    .unwrap();
    let args = |md: &PathBuf| {
        rafi(&[
            "bench",
            "report",
            "--input",
            input.to_str().unwrap(),
            "--markdown",
            md.to_str().unwrap(),
            "--plots",
            dir.join("plots").to_str().unwrap(),
        ])
    };
    for _ in 0..2 {
        let out = args(&md);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.starts_with("# Hand-written\n\nkeep me\n"));
    assert!(text.trim_end().ends_with("and me"));
    assert!(!text.contains("old table"));
    assert_eq!(text.matches(BEGIN_MARK).count(), 1, "regenerated in place");
    assert!(text.contains("](plots/latency-cdf.svg)"));
    for plot in [
        "latency-vs-payload.svg",
        "throughput-vs-workers.svg",
        "latency-cdf.svg",
    ] {
        let svg = std::fs::read_to_string(dir.join("plots").join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }

    // A file without the markers is refused, not overwritten.
    let plain = dir.join("plain.md");
    std::fs::write(&plain, "no markers\n").unwrap();
    let out = args(&plain);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bench.sh:begin"));
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "no markers\n");

    // Bad input: a clear error naming the line.
    std::fs::write(&input, "{\"key\":\"pingpong\",\"round\":1}\n{oops\n").unwrap();
    let out = args(&md);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn throughput_and_clients_print_their_fields() {
    let lines = json_lines(&rafi(&[
        "bench",
        "throughput",
        "--iters",
        "3000",
        "--warmup",
        "100",
        "--depth",
        "4",
        "--mode",
        "warm",
        "--json",
    ]));
    assert_eq!(lines.len(), 1);
    let t = &lines[0];
    assert_eq!(t["scenario"], "throughput");
    assert_eq!(t["iters"], 3000);
    assert_eq!(
        (t["workers"].as_u64(), t["depth"].as_u64()),
        (Some(1), Some(4))
    );
    assert!(t["throughput_ops"].as_f64().unwrap() > 0.0);
    assert!(t["p50_ns"].as_u64().unwrap() > 0);
    assert_eq!(t["client_threads"], 1);

    // Two client threads, each with its own allocation of one of the two workers (the
    // executor gives them the least loaded, so they do not share): the iterations are
    // shared out and every one is counted. All on one core, on purpose: any machine runs it.
    let cpu = rafi::bench::throughput::usable_cores()[0].to_string();
    let cpus = format!("{cpu},{cpu}");
    let lines = json_lines(&rafi(&[
        "bench",
        "throughput",
        "--workers",
        "2",
        "--client-cpus",
        &cpus,
        "--executor-cores",
        &cpus,
        "--iters",
        "3000",
        "--warmup",
        "100",
        "--depth",
        "4",
        "--mode",
        "warm",
        "--json",
    ]));
    let t = &lines[0];
    assert_eq!(
        (t["client_threads"].as_u64(), t["workers"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(t["iters"], 3000);

    let lines = json_lines(&rafi(&[
        "bench",
        "clients",
        "--clients",
        "1,3",
        "--iters",
        "200",
        "--mode",
        "warm",
        "--function",
        "rafi.echo",
        "--size",
        "64",
        "--json",
    ]));
    let counts: Vec<u64> = lines
        .iter()
        .map(|l| l["clients"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 3]);
    for (l, n) in lines.iter().zip([1u64, 3]) {
        assert_eq!(l["iters"].as_u64(), Some(200 * n), "every client's calls");
        assert!(l["throughput_ops"].as_f64().unwrap() > 0.0);
        assert_eq!(l["workers"], 1);
    }
    assert_eq!(
        lines[1]["client_wait"], "sleep",
        "3 clients on one core sleep"
    );
}

#[test]
fn bad_settings_are_clear_errors() {
    let out = rafi(&["bench", "throughput", "--depth", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = rafi(&["bench", "throughput", "--workers", "4096"]);
    assert_eq!(out.status.code(), Some(2));
    let out = rafi(&["bench", "throughput", "--workers", "1000", "--iters", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1000 worker(s) need 1001 cores"));
    let out = rafi(&["bench", "throughput", "--client-threads", "none"]);
    assert_eq!(out.status.code(), Some(2));
    let out = rafi(&["bench", "clients", "--clients", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = rafi(&["bench", "invoke", "--sizes", "1,x"]);
    assert_eq!(out.status.code(), Some(2));
    let out = rafi(&["bench", "report", "--input", "/nonexistent/results.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent"));
}

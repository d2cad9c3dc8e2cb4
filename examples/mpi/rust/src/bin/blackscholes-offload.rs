//! Prices a large batch of European options per MPI rank, part on the rank's own threads
//! and part on rafi workers on leased cores, at the same time; checks every price against
//! a local computation and reports local-only time, local + remote time, the speedup and
//! the invocation overhead (the rFaaS paper's offloading experiment).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use mpi::traits::{Communicator, CommunicatorCollectives};
use rafi::fabric::{self, Fabric, FabricUser};
use rafi_mpi_examples::batch::{compare, OptionBatch};
use rafi_mpi_examples::cluster::{ClusterArgs, RemoteWorkers};
use rafi_mpi_examples::ranks::{
    all_succeeded, max_over_ranks, own_or_other_failure, run_on_fabric, sum_over_ranks,
};
use rafi_mpi_examples::remote::{
    chunks, decode_prices, encode_range, invoke_spread, options_per_chunk, NOOP_FUNCTION,
    PRICE_FUNCTION,
};
use rafi_mpi_examples::stats::{median_secs, ratio};
use serde::Serialize;

const APP: &str = "blackscholes-offload";

#[derive(Debug, Parser)]
#[command(name = APP, about)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Options each rank prices.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    options: u64,
    /// The fraction of each rank's options priced by remote workers (0 to 1).
    #[arg(long, default_value_t = 0.5, value_parser = parse_fraction)]
    remote_fraction: f64,
    /// Local threads pricing the rank's own part (and the whole batch when local only).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: u64,
    /// Timed repetitions; the report gives the median of each time.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    repetitions: u64,
    /// Request/response slot size in bytes (a power of two; the executor's --max-slot-size
    /// bounds it, 1 MiB by default): it sets how many options one invocation carries.
    #[arg(long, default_value_t = 1 << 20)]
    slot_size: u32,
    /// Invocations in flight per remote worker.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Seed of the options (rank r prices the batch of seed + r).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Largest relative difference from the local computation that still counts as equal.
    #[arg(long, default_value_t = 1e-9)]
    tolerance: f64,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!("{f} is not between 0 and 1"))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    run_on_fabric(APP, &args.cluster, |world| {
        fabric::open(&args.cluster.fabric_config(), App { args: &args, world })
    })
}

struct App<'a, C: Communicator> {
    args: &'a Args,
    world: &'a C,
}

/// One rank's measurements of one repetition.
#[derive(Default)]
struct Sample {
    local_only: Duration,
    hybrid: Duration,
    local_part: Duration,
    remote_part: Duration,
    /// Archiving the remote chunks straight into their request slots.
    encode: Duration,
    decode: Duration,
    /// The same invocations of `noop`, less their archiving: transfers and calls.
    noop_calls: Duration,
}

impl<C: Communicator> FabricUser for App<'_, C> {
    type Output = anyhow::Result<()>;

    fn run<F: Fabric>(self, fabric: F) -> anyhow::Result<()> {
        let (args, world) = (self.args, self.world);
        let rank = world.rank();
        let options = args
            .cluster
            .allocation_options(&format!("{APP}-rank{rank}"), args.slots, args.slot_size)
            .map(|o| (o.geometry.max_payload(), o));
        let setup = options.and_then(|(max_payload, options)| {
            let per_chunk = options_per_chunk(max_payload);
            if per_chunk == 0 {
                bail!("a slot of {} B holds no option", args.slot_size);
            }
            let workers = RemoteWorkers::acquire(
                &fabric,
                &args.cluster,
                &[PRICE_FUNCTION, NOOP_FUNCTION],
                &options,
            )?;
            Ok((workers, per_chunk))
        });
        if !all_succeeded(world, setup.is_ok()) {
            return Err(own_or_other_failure(
                setup.map(|_| ()),
                "setting up the remote workers",
            ));
        }
        let (mut workers, per_chunk) = setup?;

        let n = usize::try_from(args.options).context("--options")?;
        let threads = args.threads as usize;
        let batch = OptionBatch::generate(n, args.seed.wrapping_add(rank as u64));
        let n_remote = ((n as f64) * args.remote_fraction).round() as usize;
        let local_range = 0..n - n_remote;
        let remote_ranges = chunks(n - n_remote..n, per_chunk);

        // Warm-up (untimed): every worker prices a chunk, so no first-call cost is timed.
        let warm_up = warm_up(&mut workers, &batch, &remote_ranges);
        if !all_succeeded(world, warm_up.is_ok()) {
            return Err(own_or_other_failure(warm_up, "the warm-up invocations"));
        }

        let mut reference = vec![0.0; n];
        let mut prices = vec![0.0; n];
        let mut samples = Vec::new();
        let mut max_error = 0.0f64;
        for _ in 0..args.repetitions {
            let mut sample = Sample::default();
            world.barrier();
            let started = Instant::now();
            batch.price_parallel(0..n, &mut reference, threads);
            sample.local_only = started.elapsed();

            prices.fill(f64::NAN);
            world.barrier();
            let hybrid = hybrid_run(
                &mut workers,
                &batch,
                &local_range,
                &remote_ranges,
                threads,
                &mut prices,
                &mut sample,
            );
            // The same invocations with a function that does nothing: what the transfers
            // and the calls cost without the pricing.
            let noop = hybrid.and_then(|()| {
                world.barrier();
                let started = Instant::now();
                let spent = invoke_spread(
                    &mut workers.allocations(),
                    NOOP_FUNCTION,
                    &remote_ranges,
                    |range, area| encode_range(&batch, range, area),
                    vec![(); remote_ranges.len()],
                    |_, _| Ok(()),
                )?;
                sample.noop_calls = started.elapsed().saturating_sub(spent.encode);
                Ok(())
            });
            let checked = noop.and_then(|()| {
                let c = compare(&prices, &reference, args.tolerance);
                max_error = max_error.max(c.max_error);
                match c.first_mismatch {
                    None => Ok(()),
                    Some(i) => bail!(
                        "verification failed: option {i} ({}) priced {} but the local computation gives {}",
                        if local_range.contains(&i) { "local" } else { "remote" },
                        prices.get(i).copied().unwrap_or(f64::NAN),
                        reference[i]
                    ),
                }
            });
            if !all_succeeded(world, checked.is_ok()) {
                return Err(own_or_other_failure(checked, "a repetition"));
            }
            samples.push(sample);
        }

        let median =
            |f: fn(&Sample) -> Duration| median_secs(&samples.iter().map(f).collect::<Vec<_>>());
        let times = max_over_ranks(
            world,
            &[
                median(|s| s.local_only),
                median(|s| s.hybrid),
                median(|s| s.local_part),
                median(|s| s.remote_part),
                median(|s| s.encode),
                median(|s| s.noop_calls),
                median(|s| s.decode),
                max_error,
                workers.ready_time().as_secs_f64(),
            ],
        );
        let total_options = sum_over_ranks(world, n as u64);
        let remote_workers = sum_over_ranks(world, workers.worker_count() as u64);
        if rank == 0 {
            let report = Report {
                app: APP,
                ranks: world.size(),
                options_per_rank: n,
                remote_fraction: args.remote_fraction,
                local_threads_per_rank: threads,
                remote_workers,
                fabric: args.cluster.fabric.to_string(),
                mode: args.cluster.mode.clone(),
                options_per_invocation: per_chunk.min(n_remote),
                invocations_per_rank: remote_ranges.len(),
                repetitions: args.repetitions,
                local_only_s: times[0],
                hybrid_s: times[1],
                speedup: ratio(times[0], times[1]),
                local_part_s: times[2],
                remote_part_s: times[3],
                invocation_overhead_s: times[4] + times[5] + times[6],
                encode_s: times[4],
                noop_invocations_s: times[5],
                decode_s: times[6],
                allocation_ready_s: times[8],
                verified_options: total_options,
                max_relative_error: times[7],
                tolerance: args.tolerance,
            };
            report.print();
        }
        drop(workers);
        Ok(())
    }
}

/// Invokes the pricing function once per worker's share of slots (untimed).
fn warm_up<F: Fabric>(
    workers: &mut RemoteWorkers<F>,
    batch: &OptionBatch,
    remote_ranges: &[std::ops::Range<usize>],
) -> anyhow::Result<()> {
    let first: Vec<_> = remote_ranges
        .iter()
        .take(workers.worker_count())
        .cloned()
        .collect();
    let mut out: Vec<Vec<f64>> = first.iter().map(|r| vec![0.0; r.len()]).collect();
    let targets: Vec<&mut [f64]> = out.iter_mut().map(Vec::as_mut_slice).collect();
    invoke_spread(
        &mut workers.allocations(),
        PRICE_FUNCTION,
        &first,
        |range, area| encode_range(batch, range, area),
        targets,
        |r, out| decode_prices(r, out),
    )?;
    Ok(())
}

/// Prices the local range on local threads while this thread invokes the remote chunks
/// (each archived straight into its request slot) and copies their prices out; fills
/// `prices` and the times of `sample`.
fn hybrid_run<F: Fabric>(
    workers: &mut RemoteWorkers<F>,
    batch: &OptionBatch,
    local_range: &std::ops::Range<usize>,
    remote_ranges: &[std::ops::Range<usize>],
    threads: usize,
    prices: &mut [f64],
    sample: &mut Sample,
) -> anyhow::Result<()> {
    let (local_prices, remote_prices) = prices.split_at_mut(local_range.len());
    let started = Instant::now();
    let remote = std::thread::scope(|s| {
        let local = s.spawn(|| {
            let started = Instant::now();
            if !local_range.is_empty() {
                batch.price_parallel(local_range.clone(), local_prices, threads);
            }
            started.elapsed()
        });
        let remote = (|| -> anyhow::Result<(Duration, Duration, Duration)> {
            if remote_ranges.is_empty() {
                return Ok((Duration::ZERO, Duration::ZERO, Duration::ZERO));
            }
            let started = Instant::now();
            let mut targets = Vec::with_capacity(remote_ranges.len());
            let mut rest = &mut *remote_prices;
            for r in remote_ranges {
                let (chunk, tail) = rest.split_at_mut(r.len());
                targets.push(chunk);
                rest = tail;
            }
            let spent = invoke_spread(
                &mut workers.allocations(),
                PRICE_FUNCTION,
                remote_ranges,
                |range, area| encode_range(batch, range, area),
                targets,
                |r, out| decode_prices(r, out),
            )?;
            Ok((started.elapsed(), spent.encode, spent.handle))
        })();
        sample.local_part = local.join().unwrap_or_default();
        remote
    });
    sample.hybrid = started.elapsed();
    let (remote_part, encode, decode) = remote?;
    sample.remote_part = remote_part;
    sample.encode = encode;
    sample.decode = decode;
    Ok(())
}

/// What rank 0 prints: a table, the verification line, and the same as one JSON line.
#[derive(Serialize)]
struct Report {
    app: &'static str,
    ranks: i32,
    options_per_rank: usize,
    remote_fraction: f64,
    local_threads_per_rank: usize,
    remote_workers: u64,
    fabric: String,
    mode: String,
    options_per_invocation: usize,
    invocations_per_rank: usize,
    repetitions: u64,
    local_only_s: f64,
    hybrid_s: f64,
    speedup: f64,
    local_part_s: f64,
    remote_part_s: f64,
    invocation_overhead_s: f64,
    encode_s: f64,
    noop_invocations_s: f64,
    decode_s: f64,
    allocation_ready_s: f64,
    verified_options: u64,
    max_relative_error: f64,
    tolerance: f64,
}

impl Report {
    fn print(&self) {
        println!(
            "{APP}: {} rank(s) x {} options, {:.0} % remote ({} invocation(s) of up to {} options per rank on {} remote worker(s) in all, {} fabric, {}), {} local thread(s) per rank; medians of {} repetition(s), slowest rank",
            self.ranks,
            self.options_per_rank,
            self.remote_fraction * 100.0,
            self.invocations_per_rank,
            self.options_per_invocation,
            self.remote_workers,
            self.fabric,
            self.mode,
            self.local_threads_per_rank,
            self.repetitions,
        );
        let ms = |s: f64| format!("{:10.2} ms", s * 1e3);
        println!("  local only                {}", ms(self.local_only_s));
        println!("  local + remote            {}", ms(self.hybrid_s));
        println!("    local part              {}", ms(self.local_part_s));
        println!("    remote part             {}", ms(self.remote_part_s));
        println!("  speedup                   {:10.2} x", self.speedup);
        println!(
            "  invocation overhead       {}",
            ms(self.invocation_overhead_s)
        );
        println!(
            "    archiving inputs        {}   (straight into the request slots)",
            ms(self.encode_s)
        );
        println!(
            "    transfers + calls       {}   (the same invocations of noop)",
            ms(self.noop_invocations_s)
        );
        println!("    copying prices out      {}", ms(self.decode_s));
        println!(
            "  executor ready after      {}   (lease to allocation, once)",
            ms(self.allocation_ready_s)
        );
        println!(
            "verified: {} prices on {} rank(s) match the local computation (max relative error {:.1e}, tolerance {:.0e})",
            self.verified_options, self.ranks, self.max_relative_error, self.tolerance
        );
        match serde_json::to_string(self) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("{APP}: the JSON report: {e}"),
        }
    }
}

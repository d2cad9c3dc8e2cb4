//! Many small tasks (Black-Scholes batches of 1–64 KiB of input each) offloaded from a
//! background thread while the rank keeps computing on its own threads, the pattern of
//! MPI codes that hand off side work. Measures compute alone, offload alone and both at
//! once, and how much of the shorter one the overlap hid; checks every offloaded result
//! against a local computation.

use std::ops::Range;
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
    copy_input, decode_prices, encode_chunks, invoke_spread, payload_for, PRICE_FUNCTION,
};
use rafi_mpi_examples::stats::{median_secs, overlap_fraction, ratio};
use serde::Serialize;

const APP: &str = "small-tasks-overlap";

#[derive(Debug, Parser)]
#[command(name = APP, about)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Tasks each rank offloads.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    tasks: u64,
    /// The smallest task input, in KiB.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    min_task_kib: u64,
    /// The largest task input, in KiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    max_task_kib: u64,
    /// Options the rank prices itself meanwhile (its own computation).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    compute_options: u64,
    /// Local threads of the rank's own computation.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: u64,
    /// Tasks in flight per remote worker.
    #[arg(long, default_value_t = 16)]
    slots: u32,
    /// Timed repetitions; the report gives the median of each time.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    repetitions: u64,
    /// Seed of the tasks and of the rank's own options.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Largest relative difference from the local computation that still counts as equal.
    #[arg(long, default_value_t = 1e-9)]
    tolerance: f64,
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

/// The tasks of one rank: consecutive ranges of one batch of options, each sized to an
/// input of `min..=max` KiB (drawn from the seed).
fn task_ranges(args: &Args, seed: u64) -> anyhow::Result<Vec<Range<usize>>> {
    if args.min_task_kib > args.max_task_kib {
        bail!(
            "--min-task-kib {} is above --max-task-kib {}",
            args.min_task_kib,
            args.max_task_kib
        );
    }
    let mut state = seed;
    let mut start = 0usize;
    let span = args.max_task_kib - args.min_task_kib + 1;
    let mut ranges = Vec::new();
    for _ in 0..args.tasks {
        // A linear congruential step is plenty to vary the sizes.
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let kib = args.min_task_kib + (state >> 33) % span;
        let options = ((kib as usize * 1024).saturating_sub(payload_for(0)) / 40).max(1);
        ranges.push(start..start + options);
        start += options;
    }
    Ok(ranges)
}

#[derive(Default)]
struct Sample {
    compute: Duration,
    offload: Duration,
    both: Duration,
    both_compute: Duration,
    both_offload: Duration,
}

impl<C: Communicator> FabricUser for App<'_, C> {
    type Output = anyhow::Result<()>;

    fn run<F: Fabric>(self, fabric: F) -> anyhow::Result<()> {
        let (args, world) = (self.args, self.world);
        let rank = world.rank();
        let seed = args.seed.wrapping_add(rank as u64);
        let setup = (|| {
            let ranges = task_ranges(args, seed)?;
            let largest = ranges.iter().map(Range::len).max().unwrap_or(1);
            // The slot: header (64 B) and the largest task's input, a power of two.
            let slot_size = u32::try_from((payload_for(largest) + 64).next_power_of_two())
                .context("--max-task-kib is too large for a slot")?;
            let options = args.cluster.allocation_options(
                &format!("{APP}-rank{rank}"),
                args.slots,
                slot_size,
            )?;
            let max_payload = options.geometry.max_payload();
            let workers =
                RemoteWorkers::acquire(&fabric, &args.cluster, &[PRICE_FUNCTION], &options)?;
            Ok((workers, ranges, max_payload))
        })();
        if !all_succeeded(world, setup.is_ok()) {
            return Err(own_or_other_failure(
                setup.map(|_| ()),
                "setting up the remote workers",
            ));
        }
        let (mut workers, ranges, max_payload) = setup?;

        let task_options = ranges.last().map_or(0, |r| r.end);
        let tasks = OptionBatch::generate(task_options, seed);
        let own = OptionBatch::generate(args.compute_options as usize, seed ^ 0x5eed);
        let threads = args.threads as usize;
        // The tasks' inputs are archived once, up front: the data a task hands off.
        let started = Instant::now();
        let inputs = encode_chunks(&tasks, &ranges, max_payload);
        let encode = started.elapsed();
        let mut reference = vec![0.0; task_options];
        tasks.price_into(0..task_options, &mut reference);
        if !all_succeeded(world, inputs.is_ok()) {
            return Err(own_or_other_failure(
                inputs.map(|_| ()),
                "archiving the tasks",
            ));
        }
        let inputs = inputs?;
        let input_bytes: usize = inputs.iter().map(Vec::len).sum();

        let mut own_prices = vec![0.0; own.len()];
        let mut results = vec![0.0; task_options];
        let mut samples = Vec::new();
        let mut max_error = 0.0f64;
        // Repetition 0 is a warm-up (untimed in the report).
        for repetition in 0..=args.repetitions {
            let mut sample = Sample::default();
            world.barrier();
            let started = Instant::now();
            own.price_parallel(0..own.len(), &mut own_prices, threads);
            sample.compute = started.elapsed();

            results.fill(f64::NAN);
            world.barrier();
            let started = Instant::now();
            let alone = offload(&mut workers, &inputs, &ranges, &mut results);
            sample.offload = started.elapsed();
            let alone =
                alone.and_then(|()| check(&results, &reference, args.tolerance, &mut max_error));

            results.fill(f64::NAN);
            world.barrier();
            let started = Instant::now();
            let together = std::thread::scope(|s| {
                let background = s.spawn(|| {
                    let started = Instant::now();
                    let r = offload(&mut workers, &inputs, &ranges, &mut results);
                    (r, started.elapsed())
                });
                let started = Instant::now();
                own.price_parallel(0..own.len(), &mut own_prices, threads);
                sample.both_compute = started.elapsed();
                let (r, elapsed) = background.join().unwrap_or_else(|_| {
                    (
                        Err(anyhow::anyhow!("the offloading thread panicked")),
                        Duration::ZERO,
                    )
                });
                sample.both_offload = elapsed;
                r
            });
            sample.both = started.elapsed();
            let outcome = alone
                .and(together)
                .and_then(|()| check(&results, &reference, args.tolerance, &mut max_error));
            if !all_succeeded(world, outcome.is_ok()) {
                return Err(own_or_other_failure(outcome, "a repetition"));
            }
            if repetition > 0 {
                samples.push(sample);
            }
        }

        let median =
            |f: fn(&Sample) -> Duration| median_secs(&samples.iter().map(f).collect::<Vec<_>>());
        let t = max_over_ranks(
            world,
            &[
                median(|s| s.compute),
                median(|s| s.offload),
                median(|s| s.both),
                median(|s| s.both_compute),
                median(|s| s.both_offload),
                encode.as_secs_f64(),
                max_error,
            ],
        );
        let total_tasks = sum_over_ranks(world, ranges.len() as u64);
        let total_bytes = sum_over_ranks(world, input_bytes as u64);
        let remote_workers = sum_over_ranks(world, workers.worker_count() as u64);
        if rank == 0 {
            let report = Report {
                app: APP,
                ranks: world.size(),
                tasks_per_rank: args.tasks,
                task_kib_min: args.min_task_kib,
                task_kib_max: args.max_task_kib,
                mean_task_bytes: ratio(total_bytes as f64, total_tasks as f64),
                compute_options_per_rank: args.compute_options,
                local_threads_per_rank: threads,
                remote_workers,
                fabric: args.cluster.fabric.to_string(),
                mode: args.cluster.mode.clone(),
                repetitions: args.repetitions,
                compute_alone_s: t[0],
                offload_alone_s: t[1],
                overlapped_s: t[2],
                overlapped_compute_s: t[3],
                overlapped_offload_s: t[4],
                overlap_fraction: overlap_fraction(t[0], t[1], t[2]),
                offload_tasks_per_s: ratio(args.tasks as f64, t[1]),
                encode_once_s: t[5],
                verified_tasks: total_tasks,
                max_relative_error: t[6],
                tolerance: args.tolerance,
            };
            report.print();
        }
        drop(workers);
        Ok(())
    }
}

/// Invokes every task and copies its prices into `results` (by the task's range).
fn offload<F: Fabric>(
    workers: &mut RemoteWorkers<F>,
    inputs: &[Vec<u8>],
    ranges: &[Range<usize>],
    results: &mut [f64],
) -> anyhow::Result<()> {
    let mut targets = Vec::with_capacity(ranges.len());
    let mut rest = results;
    for r in ranges {
        let (task, tail) = rest.split_at_mut(r.len());
        targets.push(task);
        rest = tail;
    }
    invoke_spread(
        &mut workers.allocations(),
        PRICE_FUNCTION,
        inputs,
        |input, area| copy_input(input, area),
        targets,
        |r, out| decode_prices(r, out),
    )?;
    Ok(())
}

fn check(
    results: &[f64],
    reference: &[f64],
    tolerance: f64,
    max_error: &mut f64,
) -> anyhow::Result<()> {
    let c = compare(results, reference, tolerance);
    *max_error = max_error.max(c.max_error);
    match c.first_mismatch {
        None => Ok(()),
        Some(i) => bail!(
            "verification failed: offloaded option {i} priced {} but the local computation gives {}",
            results.get(i).copied().unwrap_or(f64::NAN),
            reference[i]
        ),
    }
}

/// What rank 0 prints: a table, the verification line, and the same as one JSON line.
#[derive(Serialize)]
struct Report {
    app: &'static str,
    ranks: i32,
    tasks_per_rank: u64,
    task_kib_min: u64,
    task_kib_max: u64,
    mean_task_bytes: f64,
    compute_options_per_rank: u64,
    local_threads_per_rank: usize,
    remote_workers: u64,
    fabric: String,
    mode: String,
    repetitions: u64,
    compute_alone_s: f64,
    offload_alone_s: f64,
    overlapped_s: f64,
    overlapped_compute_s: f64,
    overlapped_offload_s: f64,
    overlap_fraction: f64,
    offload_tasks_per_s: f64,
    encode_once_s: f64,
    verified_tasks: u64,
    max_relative_error: f64,
    tolerance: f64,
}

impl Report {
    fn print(&self) {
        println!(
            "{APP}: {} rank(s) x {} tasks of {}-{} KiB (mean {:.1} KiB) on {} remote worker(s) in all ({} fabric, {}), while each rank prices {} options on {} thread(s); medians of {} repetition(s), slowest rank",
            self.ranks,
            self.tasks_per_rank,
            self.task_kib_min,
            self.task_kib_max,
            self.mean_task_bytes / 1024.0,
            self.remote_workers,
            self.fabric,
            self.mode,
            self.compute_options_per_rank,
            self.local_threads_per_rank,
            self.repetitions,
        );
        let ms = |s: f64| format!("{:10.2} ms", s * 1e3);
        println!("  compute alone             {}", ms(self.compute_alone_s));
        println!(
            "  offload alone             {}   ({:.0} tasks/s)",
            ms(self.offload_alone_s),
            self.offload_tasks_per_s
        );
        println!("  both overlapped           {}", ms(self.overlapped_s));
        println!(
            "    compute in it           {}",
            ms(self.overlapped_compute_s)
        );
        println!(
            "    offload in it           {}",
            ms(self.overlapped_offload_s)
        );
        println!(
            "  overlap fraction          {:10.2}      (1: the shorter one fully hidden, 0: none)",
            self.overlap_fraction
        );
        println!("  archiving tasks (once)    {}", ms(self.encode_once_s));
        println!(
            "verified: {} offloaded tasks on {} rank(s) match the local computation (max relative error {:.1e}, tolerance {:.0e})",
            self.verified_tasks, self.ranks, self.max_relative_error, self.tolerance
        );
        match serde_json::to_string(self) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("{APP}: the JSON report: {e}"),
        }
    }
}

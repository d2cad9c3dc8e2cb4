//! Open MPI baselines between two ranks: rank 0 measures, rank 1 serves.
//!
//! ```text
//! mpirun -np 2 --bind-to core baseline-mpi --op pingpong --sizes 1,8,64,1K,64K,1M,4M --iters 10000 --json
//! mpirun -np 2 --bind-to core baseline-mpi --op handwork --sizes 64 --iters 10000 --json
//! ```
//!
//! `pingpong` is the OSU latency test's loop: rank 0 MPI_Sends `size` bytes and MPI_Recvs
//! them back; rank 1 receives and sends its buffer back, both knowing the count of round
//! trips. `handwork` is how an MPI code hands work to another rank and gets the result:
//! rank 0 sends a request (a 16-byte header naming the task and the round, then the
//! payload) and waits for the result; rank 1 is a worker loop that receives any request
//! (MPI_ANY_SOURCE, MPI_ANY_TAG), learns its length from the status, runs the task (echo:
//! copy the input to the output, as rafi.echo does) and sends the result (a header and the
//! output) to whoever asked, until a stop message.
//!
//! Each rank pins itself to its core of `--cpus` (rank r gets the r-th) after MPI_Init,
//! unless `--no-pin`. Rank 0 checks every reply against what it sent, after the timer stops.

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use mpi::datatype::Equivalence;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;
use rafi::bench::{pin, CpuPair};
use rafi_baselines::cli::{emit, report, RunArgs};
use rafi_baselines::measure::{measure, RoundTrip};
use rafi_baselines::payload::{check_echo, fill, stamp, Corrupter};

/// Tag of a ping-pong message (both ways).
const PING_TAG: i32 = 0;
/// Tags of the hand-work pattern: a request, its result, the end of the worker loop.
const WORK_TAG: i32 = 1;
const RESULT_TAG: i32 = 2;
const STOP_TAG: i32 = 3;
/// The hand-work header: task (u32), status (u32), round (u64), little-endian.
const WORK_HEADER: usize = 16;
/// The one task the worker knows.
const TASK_ECHO: u32 = 1;
/// Result status: done, or the worker does not know the task.
const STATUS_OK: u32 = 0;
const STATUS_UNKNOWN_TASK: u32 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "baseline-mpi",
    about = "Open MPI round trips between two ranks (run under mpirun -np 2)"
)]
struct Args {
    /// What one round trip is.
    #[arg(long, value_enum, default_value_t = Op::Pingpong)]
    op: Op,
    #[command(flatten)]
    run: RunArgs,
    /// Cores of rank 0 and rank 1, A,B.
    #[arg(long, default_value = "0,1")]
    cpus: CpuPair,
    /// Leave the ranks where mpirun put them (e.g. with --bind-to core).
    #[arg(long)]
    no_pin: bool,
    /// Test-only: rank 1 corrupts its reply to message N (counted from 0).
    #[arg(long, hide = true)]
    corrupt_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Op {
    /// MPI_Send/MPI_Recv bounce of `size` bytes each way.
    Pingpong,
    /// A work request to the worker rank and its result back.
    Handwork,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Pingpong => "pingpong",
            Op::Handwork => "handwork",
        }
    }
}

fn main() {
    // Parse before MPI_Init, so that a bad flag is reported (once, by rank 0 as mpirun
    // numbers it) without starting MPI.
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let rank = std::env::var("OMPI_COMM_WORLD_RANK").unwrap_or_default();
            if rank.is_empty() || rank == "0" {
                let _ = e.print();
            }
            std::process::exit(e.exit_code());
        }
    };
    let Some(universe) = mpi::initialize() else {
        eprintln!("baseline-mpi: error: MPI is already initialized");
        std::process::exit(1);
    };
    let world = universe.world();
    let (rank, ranks) = (world.rank(), world.size());
    if ranks != 2 {
        if rank == 0 {
            eprintln!(
                "baseline-mpi: error: it needs exactly 2 ranks, this run has {ranks}: \
                 run it as `mpirun -np 2 baseline-mpi ...`"
            );
        }
        drop(universe);
        std::process::exit(2);
    }
    let result = if rank == 0 {
        measuring_rank(&world, &args)
    } else {
        serving_rank(&world, &args)
    };
    if let Err(e) = result {
        eprintln!("baseline-mpi: error on rank {rank}: {e:#}");
        // The other rank is blocked in a receive: only an abort ends the job.
        world.abort(1);
    }
}

/// Pins this rank to its core of `--cpus` unless `--no-pin`; the core, for the report.
fn pin_rank(args: &Args, rank: i32) -> Result<Option<usize>> {
    if args.no_pin {
        return Ok(None);
    }
    let (cpu, who) = if rank == 0 {
        (args.cpus.client, "rank 0")
    } else {
        (args.cpus.server, "rank 1")
    };
    pin(cpu, who)?;
    Ok(Some(cpu))
}

fn measuring_rank(world: &SimpleCommunicator, args: &Args) -> Result<()> {
    pin_rank(args, 0)?;
    let pinned = !args.no_pin;
    let library = mpi::environment::library_version().unwrap_or_default();
    let library = library.lines().next().unwrap_or("");
    let library = library
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_owned();
    let mut printer = args.run.printer();
    for &size in &args.run.sizes.0 {
        let warmup = args.run.warmup_for(size);
        if args.op == Op::Pingpong {
            // Both ranks start each size together; the worker of `handwork` just serves.
            world.barrier();
        }
        let recorder = match args.op {
            Op::Pingpong => measure(&mut PingPong::new(world, size), args.run.iters, warmup),
            Op::Handwork => measure(&mut HandWork::new(world, size), args.run.iters, warmup),
        }
        .with_context(|| format!("size {size}"))?;
        let cpu = |c: usize| {
            if pinned {
                serde_json::json!(c)
            } else {
                serde_json::Value::Null
            }
        };
        let r = report(&recorder, "mpi", args.op.name(), size, warmup)
            .with("client_cpu", cpu(args.cpus.client))
            .with("server_cpu", cpu(args.cpus.server))
            .with("mpi_library", library.clone());
        emit(&mut printer, &r);
    }
    if args.op == Op::Handwork {
        world
            .process_at_rank(1)
            .send_with_tag(&[0u8; 0][..], STOP_TAG);
    }
    Ok(())
}

fn serving_rank(world: &SimpleCommunicator, args: &Args) -> Result<()> {
    pin_rank(args, 1)?;
    let mut corrupter = Corrupter::new(args.corrupt_at);
    match args.op {
        Op::Pingpong => {
            let client = world.process_at_rank(0);
            let mut buf = vec![0u8; args.run.sizes.max()];
            for &size in &args.run.sizes.0 {
                world.barrier();
                let buf = &mut buf[..size];
                for _ in 0..args.run.warmup_for(size) + args.run.iters {
                    client.receive_into_with_tag(buf, PING_TAG);
                    corrupter.apply(buf);
                    client.send_with_tag(&*buf, PING_TAG);
                }
            }
            Ok(())
        }
        Op::Handwork => worker_loop(world, args.run.sizes.max(), &mut corrupter),
    }
}

/// The worker rank's loop: any request from anyone, run it, send its result back.
fn worker_loop(world: &SimpleCommunicator, max: usize, corrupter: &mut Corrupter) -> Result<()> {
    let mut request = vec![0u8; WORK_HEADER + max];
    let mut result = vec![0u8; WORK_HEADER + max];
    loop {
        let status = world.any_process().receive_into(&mut request[..]);
        match status.tag() {
            STOP_TAG => return Ok(()),
            WORK_TAG => {}
            tag => bail!("a message with unknown tag {tag}"),
        }
        let len = usize::try_from(status.count(u8::equivalent_datatype()))
            .context("a negative message length")?;
        ensure!(
            len >= WORK_HEADER,
            "a request of {len} bytes, shorter than its header"
        );
        let task = u32::from_le_bytes(request[..4].try_into()?);
        let input = &request[WORK_HEADER..len];
        let (code, out_len) = match task {
            TASK_ECHO => {
                result[WORK_HEADER..WORK_HEADER + input.len()].copy_from_slice(input);
                corrupter.apply(&mut result[WORK_HEADER..WORK_HEADER + input.len()]);
                (STATUS_OK, input.len())
            }
            _ => (STATUS_UNKNOWN_TASK, 0),
        };
        result[..4].copy_from_slice(&task.to_le_bytes());
        result[4..8].copy_from_slice(&code.to_le_bytes());
        result[8..16].copy_from_slice(&request[8..16]);
        world
            .process_at_rank(status.source_rank())
            .send_with_tag(&result[..WORK_HEADER + out_len], RESULT_TAG);
    }
}

/// One ping-pong round trip, rank 0's side.
struct PingPong<'a> {
    world: &'a SimpleCommunicator,
    send: Vec<u8>,
    recv: Vec<u8>,
}

impl<'a> PingPong<'a> {
    fn new(world: &'a SimpleCommunicator, size: usize) -> Self {
        let mut send = vec![0u8; size];
        fill(&mut send);
        Self {
            world,
            send,
            recv: vec![0u8; size],
        }
    }
}

impl RoundTrip for PingPong<'_> {
    type Error = anyhow::Error;

    fn prepare(&mut self, round: u64) {
        stamp(&mut self.send, round);
    }

    fn exchange(&mut self) -> Result<()> {
        let server = self.world.process_at_rank(1);
        server.send_with_tag(&self.send[..], PING_TAG);
        server.receive_into_with_tag(&mut self.recv[..], PING_TAG);
        Ok(())
    }

    fn check(&mut self, round: u64) -> Result<()> {
        Ok(check_echo(&self.send, &self.recv, round)?)
    }
}

/// One work request and its result, rank 0's side.
struct HandWork<'a> {
    world: &'a SimpleCommunicator,
    /// Header, then the payload (written in place: no packing copy).
    request: Vec<u8>,
    result: Vec<u8>,
    result_len: usize,
}

impl<'a> HandWork<'a> {
    fn new(world: &'a SimpleCommunicator, size: usize) -> Self {
        let mut request = vec![0u8; WORK_HEADER + size];
        request[..4].copy_from_slice(&TASK_ECHO.to_le_bytes());
        fill(&mut request[WORK_HEADER..]);
        Self {
            world,
            request,
            result: vec![0u8; WORK_HEADER + size],
            result_len: 0,
        }
    }
}

impl RoundTrip for HandWork<'_> {
    type Error = anyhow::Error;

    fn prepare(&mut self, round: u64) {
        self.request[8..16].copy_from_slice(&round.to_le_bytes());
        stamp(&mut self.request[WORK_HEADER..], round);
    }

    fn exchange(&mut self) -> Result<()> {
        let worker = self.world.process_at_rank(1);
        worker.send_with_tag(&self.request[..], WORK_TAG);
        let status = worker.receive_into_with_tag(&mut self.result[..], RESULT_TAG);
        self.result_len = usize::try_from(status.count(u8::equivalent_datatype()))
            .context("a negative result length")?;
        Ok(())
    }

    fn check(&mut self, round: u64) -> Result<()> {
        ensure!(
            self.result_len >= WORK_HEADER,
            "round trip {round}: a result of {} bytes, shorter than its header",
            self.result_len
        );
        let code = u32::from_le_bytes(self.result[4..8].try_into()?);
        ensure!(
            code == STATUS_OK,
            "round trip {round}: the worker answered status {code}"
        );
        let echoed_round = u64::from_le_bytes(self.result[8..16].try_into()?);
        ensure!(
            echoed_round == round,
            "round trip {round}: the result is for round {echoed_round}"
        );
        Ok(check_echo(
            &self.request[WORK_HEADER..],
            &self.result[WORK_HEADER..self.result_len],
            round,
        )?)
    }
}

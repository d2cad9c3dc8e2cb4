//! TCP request/response baseline: the client sends a length-prefixed request of `size`
//! bytes over loopback TCP and waits for the server to send it back.
//!
//! ```text
//! baseline-tcp --sizes 1,64,1K,64K,1M --iters 10000 --cpus 0,1 --json [--poll busy]
//! ```
//!
//! The server is this binary re-executed with the hidden `--serve` flag, pinned to the
//! second core of `--cpus`; it tells the client its port over a control channel (its
//! stdin and stdout), serves one connection and exits when it closes. Both sides set
//! TCP_NODELAY and read whatever the socket has at once; `--poll block` (the default)
//! sleeps in `read`, `--poll busy` spins on non-blocking reads, as a latency-minded user
//! would.

use std::net::{Ipv4Addr, TcpListener, TcpStream};

use anyhow::{Context, Result};
use clap::Parser;
use rafi::bench::{check_allowed, pin, ControlChannel, CpuPair, PeerProcess};
use rafi_baselines::cli::{emit, report, run_main, Listening, RunArgs};
use rafi_baselines::frame::{FrameError, FramedStream, Poll, HEADER};
use rafi_baselines::measure::{measure, RoundTrip};
use rafi_baselines::payload::{check_echo, fill, stamp, Corrupter};

#[derive(Parser, Debug)]
#[command(
    name = "baseline-tcp",
    about = "TCP loopback request/response latency (length-prefixed frames, TCP_NODELAY)"
)]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Cores of the client (this process) and of the server process, A,B [default: the
    /// first two this process may use].
    #[arg(long)]
    cpus: Option<CpuPair>,
    /// How both sides wait for data: blocking reads, or non-blocking reads in a busy loop.
    #[arg(long, value_enum, default_value_t = Poll::Block)]
    poll: Poll,
    /// Run as the server (started by the client).
    #[arg(long, hide = true)]
    serve: bool,
    /// Test-only: the server corrupts its reply to request N (counted from 0).
    #[arg(long, hide = true)]
    corrupt_at: Option<u64>,
    /// Test-only: the server exits (status 3) when request N arrives.
    #[arg(long, hide = true)]
    crash_at: Option<u64>,
}

fn main() {
    let args = Args::parse();
    run_main("baseline-tcp", || {
        if args.serve {
            serve(&args)
        } else {
            client(&args)
        }
    });
}

fn client(args: &Args) -> Result<()> {
    let cpus = args.cpus.unwrap_or_else(CpuPair::default_for_this_process);
    check_allowed(cpus)?;
    let mut server_args = vec![
        "--serve".to_owned(),
        format!("--cpus={cpus}"),
        format!("--poll={}", args.poll.name()),
        format!("--sizes={}", args.run.sizes.max()),
    ];
    if let Some(n) = args.corrupt_at {
        server_args.push(format!("--corrupt-at={n}"));
    }
    if let Some(n) = args.crash_at {
        server_args.push(format!("--crash-at={n}"));
    }
    let mut server = PeerProcess::spawn(&server_args).context("starting the server process")?;
    pin(cpus.client, "client")?;
    let Listening { port } = server.recv().context("waiting for the server's port")?;
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("connecting to the server on port {port}"))?;
    let mut conn = FramedStream::new(stream, args.poll, "server")?;

    let mut printer = args.run.printer();
    for &size in &args.run.sizes.0 {
        let warmup = args.run.warmup_for(size);
        let mut trip = TcpTrip::new(&mut conn, size);
        let recorder =
            measure(&mut trip, args.run.iters, warmup).with_context(|| format!("size {size}"))?;
        let r = report(&recorder, "tcp", "reqresp", size, warmup)
            .with("client_cpu", cpus.client)
            .with("server_cpu", cpus.server)
            .with("poll", args.poll.name());
        emit(&mut printer, &r);
    }
    drop(conn);
    server.finish().context("the server process")?;
    Ok(())
}

/// One request and its response.
struct TcpTrip<'a> {
    conn: &'a mut FramedStream,
    /// The request frame: header, then the payload.
    request: Vec<u8>,
    /// Where the response frame lands.
    response: Vec<u8>,
    received: usize,
}

impl<'a> TcpTrip<'a> {
    fn new(conn: &'a mut FramedStream, size: usize) -> Self {
        let mut request = vec![0u8; HEADER + size];
        fill(&mut request[HEADER..]);
        FramedStream::put_header(&mut request);
        Self {
            conn,
            request,
            response: vec![0u8; HEADER + size],
            received: 0,
        }
    }
}

impl RoundTrip for TcpTrip<'_> {
    type Error = anyhow::Error;

    fn prepare(&mut self, round: u64) {
        stamp(&mut self.request[HEADER..], round);
    }

    fn exchange(&mut self) -> Result<()> {
        self.conn.write_frame(&self.request)?;
        self.received = self.conn.read_frame(&mut self.response)?;
        Ok(())
    }

    fn check(&mut self, round: u64) -> Result<()> {
        let got = &self.response[HEADER..HEADER + self.received];
        Ok(check_echo(&self.request[HEADER..], got, round)?)
    }
}

/// The server process: echoes every frame of one connection.
fn serve(args: &Args) -> Result<()> {
    let cpus = args.cpus.context("--serve needs --cpus")?;
    pin(cpus.server, "server")?;
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a loopback port")?;
    let port = listener.local_addr()?.port();
    let mut control = ControlChannel::stdio();
    control.send(&Listening { port })?;
    let (stream, _) = listener.accept().context("accepting the client")?;
    let mut conn = FramedStream::new(stream, args.poll, "client")?;
    let mut buf = vec![0u8; HEADER + args.run.sizes.max()];
    let mut corrupter = Corrupter::new(args.corrupt_at);
    for request in 0u64.. {
        if args.crash_at == Some(request) {
            eprintln!("baseline-tcp server: exiting at request {request} (--crash-at)");
            std::process::exit(3);
        }
        let n = match conn.read_frame(&mut buf) {
            Ok(n) => n,
            // The client is done.
            Err(FrameError::Closed { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        corrupter.apply(&mut buf[HEADER..HEADER + n]);
        conn.write_frame(&buf[..HEADER + n])?;
    }
    Ok(())
}

//! gRPC unary-call baseline: the client calls `rafi.baseline.Echo/Echo` with `size` bytes
//! over loopback HTTP/2 (tonic) and gets them back.
//!
//! ```text
//! baseline-grpc --sizes 1,64,1K,64K,1M --iters 10000 --cpus 0,1 --json
//! ```
//!
//! The server is this binary re-executed with the hidden `--serve` flag, pinned to the
//! second core of `--cpus`, on a current-thread tokio runtime; it tells the client its
//! port over a control channel (its stdin and stdout) and stops when that channel closes.
//! The client, pinned to the first core, also runs a current-thread runtime: one call at a
//! time on one connection, TCP_NODELAY on both ends, 8 MiB HTTP/2 flow-control windows, no
//! TLS, no compression. The request
//! message is built before the timer starts; the reply is compared with it after the timer
//! stops.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use prost::bytes::Bytes;
use rafi::bench::{check_allowed, pin, ControlChannel, CpuPair, LatencyRecorder, PeerProcess};
use rafi_baselines::cli::{emit, report, run_main, Listening, RunArgs};
use rafi_baselines::grpc::{EchoClient, EchoServer};
use rafi_baselines::payload::{check_echo, fill, stamp};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};

/// HTTP/2 flow-control window of both ends: a whole 4 MiB message (and its framing) fits,
/// so a large call is not held up by WINDOW_UPDATE round trips (the default is 64 KiB, a
/// setting users of large messages raise).
const FLOW_WINDOW: u32 = 8 << 20;

/// Largest HTTP/2 frame either end accepts: 1 MiB instead of the default 16 KiB, so a large
/// message goes out in a few frames.
const MAX_FRAME: u32 = 1 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "baseline-grpc",
    about = "gRPC (tonic) unary Echo latency over loopback HTTP/2"
)]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Cores of the client (this process) and of the server process, A,B [default: the
    /// first two this process may use].
    #[arg(long)]
    cpus: Option<CpuPair>,
    /// Run as the server (started by the client).
    #[arg(long, hide = true)]
    serve: bool,
    /// Test-only: the server corrupts its reply to call N (counted from 0).
    #[arg(long, hide = true)]
    corrupt_at: Option<u64>,
}

fn main() {
    let args = Args::parse();
    run_main("baseline-grpc", || {
        if args.serve {
            serve(&args)
        } else {
            client(&args)
        }
    });
}

/// A current-thread runtime: one core per side, no worker threads to migrate between.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn client(args: &Args) -> Result<()> {
    let cpus = args.cpus.unwrap_or_else(CpuPair::default_for_this_process);
    check_allowed(cpus)?;
    let mut server_args = vec!["--serve".to_owned(), format!("--cpus={cpus}")];
    if let Some(n) = args.corrupt_at {
        server_args.push(format!("--corrupt-at={n}"));
    }
    let mut server = PeerProcess::spawn(&server_args).context("starting the server process")?;
    pin(cpus.client, "client")?;
    let Listening { port } = server.recv().context("waiting for the server's port")?;

    let rt = runtime()?;
    let mut printer = args.run.printer();
    rt.block_on(async {
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .tcp_nodelay(true)
            .initial_stream_window_size(FLOW_WINDOW)
            .initial_connection_window_size(FLOW_WINDOW)
            .max_frame_size(MAX_FRAME);
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to the server on port {port}"))?;
        let mut client = EchoClient::new(channel);
        for &size in &args.run.sizes.0 {
            let warmup = args.run.warmup_for(size);
            let recorder = measure(&mut client, size, args.run.iters, warmup)
                .await
                .with_context(|| format!("size {size}"))?;
            let r = report(&recorder, "grpc", "unary", size, warmup)
                .with("client_cpu", cpus.client)
                .with("server_cpu", cpus.server)
                .with("runtime", "current_thread");
            emit(&mut printer, &r);
        }
        anyhow::Ok(())
    })?;
    drop(rt);
    server.finish().context("the server process")?;
    Ok(())
}

/// `warmup` untimed and `iters` timed calls of `size` bytes, every reply checked: the loop
/// of `rafi_baselines::measure`, awaiting each call.
async fn measure(
    client: &mut EchoClient,
    size: usize,
    iters: u64,
    warmup: u64,
) -> Result<LatencyRecorder> {
    let mut payload = vec![0u8; size];
    fill(&mut payload);
    let mut recorder = LatencyRecorder::new();
    for round in 0..warmup + iters {
        stamp(&mut payload, round);
        let request = Bytes::copy_from_slice(&payload);
        let t0 = Instant::now();
        let reply = client.echo(request).await.with_context(|| {
            format!("call {round} (did the server process exit? its message, if any, is above)")
        })?;
        let elapsed = t0.elapsed();
        check_echo(&payload, &reply.payload, round)?;
        if round >= warmup {
            recorder.record(elapsed);
        }
    }
    Ok(recorder)
}

/// The server process: serves Echo until the client closes the control channel.
fn serve(args: &Args) -> Result<()> {
    let cpus = args.cpus.context("--serve needs --cpus")?;
    pin(cpus.server, "server")?;
    let rt = runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("binding a loopback port")?;
        let port = listener.local_addr()?.port();
        let mut control = ControlChannel::stdio();
        control.send(&Listening { port })?;
        // The client closes our stdin when it is done (or dies): wait for that on a thread
        // that sleeps in read(2), and stop serving then.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            while control.recv::<serde_json::Value>().is_ok() {}
            let _ = done_tx.send(());
        });
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(FLOW_WINDOW)
            .initial_connection_window_size(FLOW_WINDOW)
            .max_frame_size(MAX_FRAME)
            .add_service(EchoServer::new(args.corrupt_at))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = done_rx.await;
            })
            .await
            .context("serving")
    })
}

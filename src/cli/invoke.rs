//! `rafi invoke`: invoke a function from the shell, on an executor given by address or on
//! cores leased from the resource manager for the call.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rafi::client::{Allocation, AllocationOptions, ShippedLibrary};
use rafi::cluster::api::LeaseRequest;
use rafi::cluster::lease::{LeaseClient, Leased};
use rafi::fabric::{self, Fabric, FabricUser};
use rafi::protocol::SlotGeometry;

use crate::cli::args::FabricArgs;
use crate::cli::config::ConfigFile;

#[derive(Debug, Clone, Args)]
pub struct InvokeArgs {
    /// The function to invoke.
    pub function: String,
    /// The input, as text (UTF-8 bytes); see also --input-file and --hex.
    pub input: Option<String>,
    /// Read the input from a file ("-": standard input).
    #[arg(long, conflicts_with = "input")]
    pub input_file: Option<PathBuf>,
    /// The input argument is hexadecimal bytes.
    #[arg(long)]
    pub hex: bool,
    /// An executor to use directly (its control address).
    #[arg(long, env = "RAFI_EXECUTOR", conflicts_with = "resource_manager")]
    pub executor: Option<String>,
    /// Lease a core for this call from the resource manager at this address instead.
    #[arg(long, env = "RAFI_RESOURCE_MANAGER")]
    pub resource_manager: Option<String>,
    /// The client name the resource manager knows this client by [config: client.name].
    #[arg(long, env = "RAFI_CLIENT")]
    pub client: Option<String>,
    /// Its secret [config: client.secret].
    #[arg(long, env = "RAFI_CLIENT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// GPUs to lease with the core (needs a lease, not --executor); the executor sees
    /// exactly these as its `CUDA_VISIBLE_DEVICES`.
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    #[command(flatten)]
    pub fabric: FabricArgs,
    /// Ship this function library with the allocation (the executor must accept it).
    #[arg(long)]
    pub library: Vec<PathBuf>,
    /// Invoke this many times and report latencies.
    #[arg(long, default_value_t = 1)]
    pub repeat: u64,
    /// How long one invocation may take, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// How to print the output.
    #[arg(long, value_enum, default_value_t = OutputArg::Auto)]
    pub output: OutputArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputArg {
    /// Text when it is UTF-8, hex otherwise.
    Auto,
    Text,
    Hex,
    /// The bytes as they are, on standard output.
    Raw,
}

pub fn run(args: &InvokeArgs, file: &ConfigFile) -> anyhow::Result<()> {
    let input = read_input(args)?;
    let mut args = args.clone();
    args.client = args.client.or_else(|| file.client.name.clone());
    args.secret = args.secret.or_else(|| file.client.secret.clone());
    args.resource_manager = args.resource_manager.or_else(|| {
        // A configured resource manager is used only when no executor was named.
        args.executor
            .is_none()
            .then(|| file.cluster.resource_manager.clone())
            .flatten()
    });
    let args = &args;
    let config = rafi::bench::invoke::fabric_config(
        args.fabric.fabric,
        args.fabric.device.clone(),
        args.fabric.gid_index,
    );
    fabric::open(&config, Invoke { args, input })
        .with_context(|| format!("opening the {} fabric", args.fabric.fabric))?
}

fn read_input(args: &InvokeArgs) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = &args.input_file {
        if path.as_os_str() == "-" {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
            return Ok(bytes);
        }
        return std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    }
    let text = args.input.clone().unwrap_or_default();
    if args.hex {
        return parse_hex(&text);
    }
    Ok(text.into_bytes())
}

fn parse_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() % 2 != 0 {
        bail!("--hex input has an odd number of digits");
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .with_context(|| format!("'{}' is not a hex byte", &digits[i..i + 2]))
        })
        .collect()
}

struct Invoke<'a> {
    args: &'a InvokeArgs,
    input: Vec<u8>,
}

impl FabricUser for Invoke<'_> {
    type Output = anyhow::Result<()>;

    fn run<F: Fabric>(self, fabric: F) -> anyhow::Result<()> {
        let args = self.args;
        let mut libraries = Vec::new();
        for path in &args.library {
            libraries.push(
                ShippedLibrary::from_file(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            );
        }
        let slot = (self.input.len() + 64).next_power_of_two().max(64 << 10);
        let options = AllocationOptions {
            client_name: format!("rafi-invoke-{}", std::process::id()),
            timeout: Duration::from_millis(args.timeout_ms),
            geometry: SlotGeometry::new(8, u32::try_from(slot).context("input too large")?)
                .context("input too large for a slot")?,
            libraries,
            ..AllocationOptions::default()
        };
        let functions = [args.function.as_str()];
        match (&args.executor, &args.resource_manager) {
            (Some(executor), _) => {
                if args.gpus > 0 {
                    bail!(
                        "--gpus leases GPUs from the resource manager: give --resource-manager \
                         instead of --executor"
                    );
                }
                let mut a = Allocation::connect(fabric, executor.as_str(), &functions, options)
                    .with_context(|| format!("allocating a worker of {executor}"))?;
                invoke_and_print(&mut a, args, &self.input)
            }
            (None, Some(rm)) => {
                let client = args.client.as_deref().unwrap_or("cli");
                let secret = args.secret.as_deref().unwrap_or_default();
                let leases = LeaseClient::new(rm.as_str(), client, secret);
                let lease = leases
                    .lease(&LeaseRequest {
                        cores: 1,
                        memory_mib: 0,
                        gpus: args.gpus,
                        duration_ms: (args.timeout_ms * args.repeat.max(1)).max(60_000),
                        fabric: Some(args.fabric.fabric),
                    })
                    .with_context(|| match args.gpus {
                        0 => "leasing a core".to_string(),
                        n => format!("leasing a core and {n} GPU(s)"),
                    })?;
                let part = lease.parts.first().context("the lease has no part")?;
                let result = Leased::allocate(fabric, part, &functions, None, options)
                    .with_context(|| format!("allocating on node {}", part.node_name))
                    .and_then(|mut leased| {
                        eprintln!(
                            "rafi invoke: lease {} on node {} cores {:?} GPUs {:?}, executor \
                             ready in {:.1} ms",
                            lease.lease,
                            part.node_name,
                            part.cores,
                            part.gpus,
                            leased.ready.as_secs_f64() * 1e3
                        );
                        invoke_and_print(&mut leased.allocation, args, &self.input)
                    });
                if let Err(e) = leases.release(lease.lease) {
                    eprintln!("rafi invoke: releasing lease {}: {e}", lease.lease);
                }
                result
            }
            (None, None) => bail!(
                "say where to invoke: --executor ADDR (or RAFI_EXECUTOR), or \
                 --resource-manager ADDR (or RAFI_RESOURCE_MANAGER) to lease a core"
            ),
        }
    }
}

fn invoke_and_print<F: Fabric>(
    a: &mut Allocation<F>,
    args: &InvokeArgs,
    input: &[u8],
) -> anyhow::Result<()> {
    let f = a.function(&args.function)?;
    let mut samples = Vec::with_capacity(args.repeat as usize);
    let mut output = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let t0 = Instant::now();
        let view = a
            .invoke_view(f, input)
            .with_context(|| format!("invoking {}", args.function))?;
        samples.push(t0.elapsed());
        output.clear();
        output.extend_from_slice(&view);
    }
    print_output(&output, args.output)?;
    if args.repeat > 1 {
        samples.sort();
        let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        eprintln!(
            "rafi invoke: {} calls, p50 {:?}, p99 {:?}",
            samples.len(),
            pct(0.5),
            pct(0.99)
        );
    }
    Ok(())
}

fn print_output(output: &[u8], how: OutputArg) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let text = std::str::from_utf8(output).ok();
    match (how, text) {
        (OutputArg::Raw, _) => out.write_all(output)?,
        (OutputArg::Text | OutputArg::Auto, Some(t)) => writeln!(out, "{t}")?,
        (OutputArg::Text, None) => bail!("the output is not UTF-8 text (use --output hex)"),
        (OutputArg::Hex | OutputArg::Auto, _) => {
            let hex: String = output.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(out, "{hex}")?;
        }
    }
    Ok(())
}

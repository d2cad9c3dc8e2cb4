//! `rafi status`: nodes, leases and usage, as the resource manager sees them.

use anyhow::Context;
use clap::Args;
use rafi::cluster::api::{LeaseStatus, NodeStatus, Usage};
use rafi::cluster::http::call;

use crate::cli::config::ConfigFile;

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The resource manager [config: cluster.resource_manager; default 127.0.0.1:7800].
    #[arg(long, env = "RAFI_RESOURCE_MANAGER")]
    pub resource_manager: Option<String>,
    /// A client name known to the resource manager [config: client.name] …
    #[arg(long, env = "RAFI_CLIENT")]
    pub client: Option<String>,
    /// … and its secret [config: client.secret]. Without a client, the cluster secret
    /// (--secret, RAFI_SECRET, or the configuration) is used.
    #[arg(long, env = "RAFI_CLIENT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Print the three JSON documents (nodes, leases, usage), one per line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &StatusArgs, file: &ConfigFile) -> anyhow::Result<()> {
    let rm = args
        .resource_manager
        .clone()
        .or_else(|| file.cluster.resource_manager.clone())
        .unwrap_or_else(|| "127.0.0.1:7800".into());
    let credential = match (
        args.client.clone().or_else(|| file.client.name.clone()),
        args.secret.clone().or_else(|| file.client.secret.clone()),
    ) {
        (Some(client), Some(secret)) => format!("{client}:{secret}"),
        _ => file
            .secret(std::env::var("RAFI_SECRET").ok().as_deref(), None)
            .context("no credential: give --client and --secret, or the cluster secret")?,
    };
    let get = |path: &str| -> anyhow::Result<serde_json::Value> {
        call::<(), _>(&rm, "GET", path, &credential, None)
            .with_context(|| format!("GET {path} from the resource manager at {rm}"))
    };
    let (nodes, leases, usage) = (get("/v1/nodes")?, get("/v1/leases")?, get("/v1/usage")?);
    if args.json {
        for doc in [&nodes, &leases, &usage] {
            println!("{doc}");
        }
        return Ok(());
    }
    let nodes: Vec<NodeStatus> = serde_json::from_value(nodes)?;
    let leases: Vec<LeaseStatus> = serde_json::from_value(leases)?;
    let usage: Vec<Usage> = serde_json::from_value(usage)?;
    println!("nodes ({}):", nodes.len());
    for n in &nodes {
        println!(
            "  {:>3} {:<12} {:<5} {:<6} {:<21} spare {:?} leased {:?}",
            n.node,
            n.name,
            format!("{:?}", n.state).to_lowercase(),
            n.fabric.name(),
            n.manager_address,
            n.spare_cores,
            n.leased_cores
        );
    }
    println!("leases ({}):", leases.len());
    for l in &leases {
        let cores: Vec<String> = l
            .parts
            .iter()
            .map(|p| format!("node {} cores {:?}", p.node, p.cores))
            .collect();
        println!(
            "  {:>3} {:<12} {:<8} {}",
            l.lease,
            l.client,
            format!("{:?}", l.state).to_lowercase(),
            cores.join(", ")
        );
    }
    println!("usage:");
    for u in &usage {
        println!(
            "  lease {:>3} {:<12} {:>10.3} core-s {:>10} invocations  busy {:>8} us  hot {:>8} us",
            u.lease,
            u.client,
            u.core_seconds,
            u.invocations,
            u.busy_ns / 1000,
            u.hot_ns / 1000
        );
    }
    Ok(())
}

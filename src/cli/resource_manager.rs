//! `rafi resource-manager`: one per cluster; nodes, leases and accounting.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use rafi::cluster::resource::{ResourceManager, ResourceManagerConfig};

use crate::cli::config::ConfigFile;

#[derive(Debug, Clone, Args)]
pub struct ResourceManagerArgs {
    /// The HTTP address [config: resource_manager.listen; default 127.0.0.1:7800].
    #[arg(long)]
    pub listen: Option<String>,
    /// The SQLite database [config: resource_manager.database; default rafi-resource.db].
    #[arg(long)]
    pub database: Option<PathBuf>,
    /// The cluster secret [config: cluster.secret]; prefer --secret-file.
    #[arg(long, env = "RAFI_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A file holding the cluster secret [config: cluster.secret_file].
    #[arg(long, env = "RAFI_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// A client allowed to lease, as NAME:SECRET (repeatable) [config:
    /// resource_manager.clients].
    #[arg(long = "client")]
    pub clients: Vec<String>,
    /// How often executor managers must send heartbeats, in ms [default 1000].
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
}

pub fn config(
    args: &ResourceManagerArgs,
    file: &ConfigFile,
) -> anyhow::Result<ResourceManagerConfig> {
    let section = &file.resource_manager;
    let mut c = ResourceManagerConfig {
        secret: file.secret(args.secret.as_deref(), args.secret_file.as_deref())?,
        ..ResourceManagerConfig::default()
    };
    if let Some(listen) = args.listen.clone().or_else(|| section.listen.clone()) {
        c.listen = listen
            .parse()
            .with_context(|| format!("{listen:?} is not an address like 127.0.0.1:7800"))?;
    }
    if let Some(db) = args.database.clone().or_else(|| section.database.clone()) {
        c.database = db;
    }
    if let Some(ms) = args.heartbeat_interval_ms.or(section.heartbeat_interval_ms) {
        c.heartbeat_interval = Duration::from_millis(ms);
    }
    for client in args.clients.iter().chain(&section.clients) {
        let Some((name, secret)) = client.split_once(':') else {
            bail!("client {client:?} is not NAME:SECRET");
        };
        c.clients.insert(name.to_string(), secret.to_string());
    }
    Ok(c)
}

pub fn run(args: &ResourceManagerArgs, file: &ConfigFile) -> anyhow::Result<()> {
    let config = config(args, file)?;
    let (db, clients) = (config.database.clone(), config.clients.len());
    let rm = ResourceManager::start(config).context("starting the resource manager")?;
    eprintln!(
        "rafi resource-manager: listening on {}, database {}, {clients} client(s) configured",
        rm.address(),
        db.display()
    );
    loop {
        std::thread::park();
    }
}

//! `rafi bench report`: the JSON lines of `scripts/bench.sh` → markdown tables and SVG
//! plots (see `rafi::bench::summary`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rafi::bench::plot;
use rafi::bench::summary::{self, Results};

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The JSON lines, each tagged with "key" and "round", plus one "machine" line.
    #[arg(long, value_name = "FILE.jsonl")]
    pub input: PathBuf,
    /// Rewrite the section between `<!-- bench.sh:begin -->` and `<!-- bench.sh:end -->`
    /// of this markdown file (created with only that section when it does not exist);
    /// without it the section goes to stdout.
    #[arg(long, value_name = "FILE.md")]
    pub markdown: Option<PathBuf>,
    /// Write the SVG plots into this directory (created when missing).
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
}

pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let results =
        Results::parse(&text).with_context(|| format!("reading {}", args.input.display()))?;
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, p) in results.plots() {
            let path = dir.join(name);
            plot::write(&p, &path).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let link = match (&args.plots, &args.markdown) {
        (Some(dir), Some(md)) => Some(link_from(md, dir)),
        (Some(dir), None) => Some(dir.display().to_string()),
        _ => None,
    };
    let section = results.markdown(link.as_deref());
    match &args.markdown {
        None => print!("{section}"),
        Some(path) => {
            let doc = match std::fs::read_to_string(path) {
                Ok(doc) => summary::replace_section(&doc, &section)
                    .with_context(|| format!("updating {}", path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    summary::new_document(&section)
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            std::fs::write(path, doc).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// How the markdown file at `md` links to the directory `dir`: relative when `dir` is
/// under the file's directory.
fn link_from(md: &Path, dir: &Path) -> String {
    let base = md.parent().unwrap_or(Path::new(""));
    dir.strip_prefix(base).unwrap_or(dir).display().to_string()
}

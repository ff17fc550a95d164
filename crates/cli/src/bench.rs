//! `hutong bench`: measured figures for docs/BENCHMARKS.md.

use clap::Args;
use hutong_server::Settings;

#[derive(Args)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs, _s: &Settings) -> anyhow::Result<()> {
    anyhow::bail!("the benchmark is not built yet")
}

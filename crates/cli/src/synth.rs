//! `hutong synth`: write a synthetic region to a directory.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

#[derive(Args, Clone)]
pub struct SynthArgs {
    /// Number of residents.
    #[arg(long, default_value_t = 2_000)]
    pub residents: u64,
    /// Number of institutions (hospitals, health centres, clinics, CDC, blood and exam centres).
    #[arg(long, default_value_t = 12)]
    pub institutions: usize,
    /// Random seed: the same seed and options give byte-identical output.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Years of history.
    #[arg(long, default_value_t = 5)]
    pub years: u32,
    /// Output directory (created; must be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// The generation date; nothing happens after it.
    #[arg(long, default_value = "2026-06-30")]
    pub as_of: String,
    /// Prefecture-level division code of the region (GB/T 2260).
    #[arg(long, default_value_t = 330100)]
    pub city: u32,
    /// Output formats: ndjson, bundles, or both (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "ndjson")]
    pub format: Vec<String>,
    /// Share of resources given a recorded quality defect.
    #[arg(long, default_value_t = 0.01)]
    pub defect_rate: f64,
    /// Multiplier on the default rates of intake variations (0 disables them).
    #[arg(long, default_value_t = 1.0)]
    pub variation_scale: f64,
    /// Per-kind override, repeatable: KIND=P sets an intake variation's probability per
    /// Patient (e.g. id-typo=0.05, name-pinyin=0); KIND=W a defect kind's relative weight
    /// (e.g. unit-error=3, duplicate=0).
    #[arg(long = "rate", value_name = "KIND=VALUE")]
    pub rates: Vec<String>,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Days of clinic schedules and slots each institution publishes to the slot pool after
    /// the generation date (0: none).
    #[arg(long, default_value_t = 14)]
    pub schedule_days: u32,
}

impl SynthArgs {
    pub fn config(&self) -> anyhow::Result<hutong_synth::Config> {
        let mut ndjson = false;
        let mut bundles = false;
        for f in &self.format {
            match f.as_str() {
                "ndjson" => ndjson = true,
                "bundles" => bundles = true,
                "both" => {
                    ndjson = true;
                    bundles = true
                }
                other => anyhow::bail!("unknown --format '{other}': use ndjson, bundles or both"),
            }
        }
        let mut rates = std::collections::BTreeMap::new();
        for r in &self.rates {
            let (k, v) = r
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--rate {r}: expected KIND=VALUE"))?;
            let v: f64 = v
                .parse()
                .map_err(|_| anyhow::anyhow!("--rate {r}: '{v}' is not a number"))?;
            rates.insert(k.to_string(), v);
        }
        Ok(hutong_synth::Config {
            rates,
            residents: self.residents,
            institutions: self.institutions,
            seed: self.seed,
            years: self.years,
            as_of: hutong_synth::Config::parse_date(&self.as_of)?,
            city: self.city,
            ndjson,
            bundles,
            defect_rate: self.defect_rate,
            variation_scale: self.variation_scale,
            threads: self.threads,
            schedule_days: self.schedule_days,
            schedule_from: None,
        })
    }
}

/// Generates with a progress bar; returns the summary and the elapsed seconds.
pub fn generate(
    cfg: &hutong_synth::Config,
    out: &std::path::Path,
) -> anyhow::Result<(hutong_synth::Summary, f64)> {
    let bar = indicatif::ProgressBar::new(cfg.residents);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} residents {msg}",
        )
        .expect("valid template"),
    );
    let t0 = Instant::now();
    let progress = |persons: u64, resources: u64| {
        bar.set_position(persons);
        bar.set_message(format!("{resources} resources"));
    };
    let summary = hutong_synth::generate(cfg, out, &progress)?;
    bar.finish_and_clear();
    Ok((summary, t0.elapsed().as_secs_f64()))
}

pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let (s, secs) = generate(&cfg, &args.out)?;
    println!(
        "Wrote {} resources for {} residents ({} institution patients) at {} institutions to {} in {:.1}s ({:.0} resources/s).",
        s.resources,
        s.residents,
        s.patients,
        s.institutions.len(),
        args.out.display(),
        secs,
        s.resources as f64 / secs.max(1e-3)
    );
    for (t, n) in &s.by_type {
        println!("{t:>24}  {n}");
    }
    println!(
        "Recorded {} identity variations and {} quality defects in {}/truth/defects.csv.",
        s.identity_variations,
        s.quality_defects,
        args.out.display()
    );
    Ok(())
}

//! A synthetic region for development, demos, tests and benchmarks: Chinese residents,
//! the institutions that treat them, what each institution would submit to the platform
//! (its own Patient with intake variations, and the records), injected quality defects,
//! and the ground truth to score identity matching and quality control against.
//!
//! Output layout:
//! - `registry/{Organization,Practitioner,PractitionerRole}.ndjson`
//! - `institutions/<code>/<Type>.ndjson` and/or `institutions/<code>/bundles/<patient>.json`
//! - `institutions/<code>/{Schedule,Slot}.ndjson`: the clinics each institution offers to the
//!   slot pool for the days after the generation date
//! - `truth/{institutions,residents,persons,defects,manifest,schedules}.csv`, `region.json`
//!
//! Deterministic: the same configuration gives byte-identical output, whatever the number
//! of threads, because every resident draws from their own random stream and chunks are
//! written in order.

mod output;
mod people;
mod records;
mod region;
mod rng;
mod schedules;
mod tables;
mod time;

use std::path::{Path, PathBuf};

pub use records::{COLLECTED_URL, HEALTH_CARD_SYSTEM, ID_SYSTEM};
pub use region::Kind;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Config {
    pub residents: u64,
    pub institutions: usize,
    pub seed: u64,
    /// Years of history before `as_of`.
    pub years: u32,
    /// The generation date (days since 1970-01-01): nothing happens after it.
    pub as_of: i32,
    /// The prefecture (GB/T 2260 code) the region covers.
    pub city: u32,
    pub ndjson: bool,
    pub bundles: bool,
    /// Share of resources given a quality defect.
    pub defect_rate: f64,
    /// Multiplier on the default rates of intake variations (0 = none).
    pub variation_scale: f64,
    /// Per-kind overrides: for an intake variation (`id-typo`, `name-pinyin`, …) its
    /// probability per Patient; for a quality defect (`unit-error`, …) its relative weight
    /// among the defects a resource can get (0 disables it).
    pub rates: std::collections::BTreeMap<String, f64>,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Days of clinic schedules and slots published (0: none)…
    pub schedule_days: u32,
    /// …from this day (days since 1970-01-01); by default the day after `as_of`. The demo
    /// publishes from today, so that its pool has slots to book whatever its history's date.
    pub schedule_from: Option<i32>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            residents: 2_000,
            institutions: 12,
            seed: 1,
            years: 5,
            as_of: time::days(2026, 6, 30),
            city: 330100,
            ndjson: true,
            bundles: false,
            defect_rate: 0.01,
            variation_scale: 1.0,
            rates: Default::default(),
            threads: 0,
            schedule_days: 14,
            schedule_from: None,
        }
    }
}

impl Config {
    pub fn window_start(&self) -> i32 {
        self.as_of - self.years as i32 * 365
    }

    /// Parses `YYYY-MM-DD` into the `as_of` day.
    pub fn parse_date(s: &str) -> Result<i32, SynthError> {
        let bad = || SynthError::Config(format!("'{s}' is not a date (YYYY-MM-DD)"));
        let p: Vec<&str> = s.split('-').collect();
        if p.len() != 3 {
            return Err(bad());
        }
        let (y, m, d) = (
            p[0].parse::<i32>().map_err(|_| bad())?,
            p[1].parse::<u32>().map_err(|_| bad())?,
            p[2].parse::<u32>().map_err(|_| bad())?,
        );
        if !(1900..=2100).contains(&y) || !hutong_cn::idcard::is_date(y as u32, m, d) {
            return Err(bad());
        }
        Ok(time::days(y, m, d))
    }

    fn check(&self) -> Result<(), SynthError> {
        let bad = |m: &str| Err(SynthError::Config(m.to_string()));
        if self.residents == 0 {
            return bad("--residents must be at least 1");
        }
        if self.institutions == 0 || self.institutions > 999 {
            return bad("--institutions must be between 1 and 999");
        }
        if self.years == 0 || self.years > 50 {
            return bad("--years must be between 1 and 50");
        }
        if !(0.0..=1.0).contains(&self.defect_rate) {
            return bad("--defect-rate must be between 0 and 1");
        }
        if !(0.0..=20.0).contains(&self.variation_scale) {
            return bad("--variation-scale must be between 0 and 20");
        }
        for (k, v) in &self.rates {
            if !KINDS.contains(&k.as_str()) {
                return Err(SynthError::Config(format!(
                    "unknown kind '{k}' in --rate (kinds: {})",
                    KINDS.join(", ")
                )));
            }
            if !(0.0..=1.0).contains(v) && !DEFECTS.contains(&k.as_str()) || *v < 0.0 {
                return Err(SynthError::Config(format!(
                    "--rate {k}={v}: a probability is between 0 and 1"
                )));
            }
        }
        if !self.ndjson && !self.bundles {
            return bad("choose at least one output format");
        }
        Ok(())
    }
}

/// Quality defect kinds (`truth/defects.csv`, class `quality`).
pub const DEFECTS: &[&str] = &[
    "missing-required",
    "invalid-code",
    "impossible-date",
    "unit-error",
    "invalid-id-check",
    "dangling-reference",
    "duplicate",
    "wrong-patient",
];

/// Every kind `--rate` accepts: the quality defects and the intake variations.
pub const KINDS: &[&str] = &[
    "missing-required",
    "invalid-code",
    "impossible-date",
    "unit-error",
    "invalid-id-check",
    "dangling-reference",
    "duplicate",
    "wrong-patient",
    "id-missing",
    "id-typo",
    "id-transposed",
    "id-legacy-15",
    "id-lowercase-x",
    "id-fullwidth",
    "name-homophone",
    "name-traditional",
    "name-swapped",
    "name-dropped",
    "name-pinyin",
    "phone-missing",
    "sex-missing",
    "birthdate-day-month-swap",
    "address-partial",
];

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{0}")]
    Config(String),
    #[error("{0} is not a prefecture-level division code (e.g. 330100 for 杭州市)")]
    UnknownCity(u32),
    #[error("{0} already holds files; choose an empty or new directory")]
    NotEmpty(PathBuf),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a run produced.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub residents: u64,
    pub institutions: Vec<InstitutionSummary>,
    pub patients: u64,
    pub resources: u64,
    pub by_type: std::collections::BTreeMap<String, u64>,
    pub identity_variations: u64,
    pub quality_defects: u64,
}

#[derive(Debug, Clone)]
pub struct InstitutionSummary {
    pub code: String,
    pub name: String,
    pub kind: &'static str,
    pub uscc: String,
    /// The `meta.source` of its submissions.
    pub source: String,
    pub dir: PathBuf,
}

/// Progress callback: residents done, resources written.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Generates a region into `out` (created if missing, must be empty).
pub fn generate(cfg: &Config, out: &Path, progress: Progress) -> Result<Summary, SynthError> {
    cfg.check()?;
    output::run(cfg, out, progress)
}

//! `hutong`: the server and the command line.
//!
//! Configuration comes from flags, `HUTONG_*` environment variables, and a TOML file
//! (`--config`, default `./hutong.toml` when present), in that order of precedence.

mod admin;
mod bench;
mod check;
mod demo;
mod levels;
mod link;
mod reconcile;
mod synth;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use hutong_server::{Application, Settings};
use serde::Deserialize;

#[derive(Parser)]
#[command(
    name = "hutong",
    version,
    about = "Hutong (互通): regional health-record interoperability platform"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "HUTONG_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory for the embedded store (SQLite).
    #[arg(long, global = true, env = "HUTONG_DATA_DIR")]
    data_dir: Option<String>,
    /// PostgreSQL URL (`postgres://…`); overrides the data directory.
    #[arg(long, global = true, env = "HUTONG_DATABASE_URL")]
    database_url: Option<String>,
    /// The keyring (default: keys.json in the data directory, or ./hutong-keys.json with
    /// PostgreSQL).
    #[arg(long, global = true, env = "HUTONG_KEYS_FILE")]
    keys_file: Option<PathBuf>,
    /// The intake rules file (TOML; rules left out keep their defaults).
    #[arg(long, global = true, env = "HUTONG_RULES")]
    rules: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the FHIR API (base `/fhir`).
    Serve(ServeArgs),
    /// Check NDJSON files against the intake rules before sending them (and score the rules
    /// against a generated region's injected defects with --truth).
    Check(check::CheckArgs),
    /// Load NDJSON files, bundles, or directories of them (resumable).
    Import {
        paths: Vec<PathBuf>,
        /// The submitting institution recorded as meta.source.
        #[arg(long, env = "HUTONG_SOURCE")]
        source: Option<String>,
        /// The value indexes on dates and strings (embedded store): `auto` drops them during
        /// a load larger than the store (and 64 MiB) and builds them once at its end —
        /// faster, and searches on those parameters are slower until then; `defer` always
        /// does; `keep` never does.
        #[arg(long, value_enum, default_value = "auto")]
        indexes: IndexMode,
    },
    /// Write every current resource as NDJSON files (one per type).
    Export {
        #[arg(long, default_value = "export")]
        out: PathBuf,
        /// Only these types (comma-separated).
        #[arg(long = "type", value_delimiter = ',')]
        types: Vec<String>,
        /// Only resources changed since this instant.
        #[arg(long)]
        since: Option<String>,
    },
    /// Compare a source's files (or manifest) with what the platform holds from it for a
    /// period: missing, extra and differing resources, and the ones to resend.
    Reconcile(reconcile::ReconcileArgs),
    /// Run the benchmarks and write docs/BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Write a synthetic region: institutions, residents, their records and the truth.
    Synth(synth::SynthArgs),
    /// Generate a synthetic region, load it into a fresh embedded store, and serve it.
    Demo(demo::DemoArgs),
    /// Deduplicate a CSV of demographic records (or a synthetic region's Patients).
    Link(link::LinkArgs),
    /// Accounts: institution clients, clinicians and operators.
    #[command(subcommand)]
    Access(admin::AccessCmd),
    /// The keyring: rotate signing and data keys, re-encrypt, show public keys.
    #[command(subcommand)]
    Keys(admin::KeysCmd),
    /// The audit trail: verify, checkpoint, show.
    #[command(subcommand)]
    Audit(admin::AuditCmd),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HUTONG_LISTEN")]
    listen: Option<SocketAddr>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "HUTONG_BODY_LIMIT")]
    body_limit: Option<usize>,
    /// Public base URL of the FHIR API (default: from the Host header).
    #[arg(long, env = "HUTONG_BASE_URL")]
    base_url: Option<String>,
    /// Source recorded when a request names none (X-Hutong-Source).
    #[arg(long, env = "HUTONG_DEFAULT_SOURCE")]
    default_source: Option<String>,
    /// Milliseconds between background runs that link new Patients to persons (0: only
    /// when persons are read or matched).
    #[arg(long, env = "HUTONG_LINK_INTERVAL_MS")]
    link_interval_ms: Option<u64>,
    /// Where the identity (matching) index lives: `memory` (rebuilt from the Patients at
    /// start; the embedded default) or `database` (shared by every node, kept across
    /// restarts; the default on PostgreSQL).
    #[arg(long, env = "HUTONG_MPI_INDEX", value_parser = ["memory", "database"])]
    mpi_index: Option<String>,
    /// Run as a node of the platform hierarchy under this id (also its client id at the
    /// upstream).
    #[arg(long, env = "HUTONG_NODE_ID")]
    node_id: Option<String>,
    /// The node's level: district, city or province.
    #[arg(long, env = "HUTONG_NODE_LEVEL")]
    node_level: Option<String>,
    /// The district a district node serves (GB/T 2260 code or name): the upstream pushes
    /// its residents' records down.
    #[arg(long, env = "HUTONG_NODE_DISTRICT")]
    node_district: Option<String>,
    /// The upstream node's FHIR base URL: what this node accepts is forwarded there.
    #[arg(long, env = "HUTONG_UPSTREAM")]
    upstream: Option<String>,
    /// This node's client secret at the upstream.
    #[arg(long, env = "HUTONG_UPSTREAM_SECRET", hide_env_values = true)]
    upstream_secret: Option<String>,
}

/// The `[node]` table: this platform as a node of the hierarchy.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct NodeFileConfig {
    id: Option<String>,
    level: Option<String>,
    district: Option<String>,
    upstream: Option<String>,
    upstream_secret: Option<String>,
    /// What the upstream pushes down (`Type` or `Type?search`); default Patient, Condition,
    /// CarePlan, Immunization.
    push: Option<Vec<String>>,
}

/// The configuration file's shape; every key optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<String>,
    rules: Option<PathBuf>,
    database_url: Option<String>,
    listen: Option<SocketAddr>,
    body_limit: Option<usize>,
    base_url: Option<String>,
    default_source: Option<String>,
    /// Milliseconds between background linking runs (0: link only on demand).
    link_interval_ms: Option<u64>,
    /// Where the identity index lives: "memory" or "database".
    mpi_index: Option<hutong_link::matching::IndexKind>,
    /// Trust rank per source (`meta.source`) for the person's golden record.
    #[serde(default)]
    source_trust: std::collections::HashMap<String, i32>,
    /// log2 posterior odds at or above which a new Patient joins the matched person.
    link_threshold: Option<f64>,
    /// log2 posterior odds at or above which a pair is queued for review.
    review_threshold: Option<f64>,
    /// How much better (log2 odds) a record's best person must fit than another person
    /// known to be different for it to link (default 6).
    link_margin: Option<f64>,
    /// People in the region (default 10,000,000): how many namesakes a common name and
    /// birth date can be expected to have.
    region_population: Option<f64>,
    /// The keyring file.
    keys_file: Option<PathBuf>,
    /// Hours a grant by SMS code or app approval lasts (default 24).
    grant_hours: Option<u32>,
    /// Hours break-glass access lasts (default 4).
    break_glass_hours: Option<u32>,
    /// Serve the development message outbox at /dev/outbox (never in production: it shows
    /// one-time codes).
    #[serde(default)]
    dev_outbox: bool,
    /// Seconds between signed audit checkpoints (default 60).
    checkpoint_seconds: Option<u64>,
    /// The slot pool: the family doctors' share, its release, the hold time, and shares
    /// per institution or department.
    #[serde(default)]
    pool: PoolConfig,
    /// This platform as a node of the hierarchy.
    #[serde(default)]
    node: NodeFileConfig,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PoolConfig {
    /// Percent of every schedule's slots reserved for family doctors' referrals (20).
    family_doctor_share: Option<f64>,
    /// Hours before a reserved slot's start that it returns to the public pool (48).
    release_hours: Option<f64>,
    /// Minutes a `$hold` keeps a slot (10).
    hold_minutes: Option<f64>,
    /// Hours a receiving institution has to accept a referral before it is escalated (48).
    referral_accept_hours: Option<f64>,
    /// `[[pool.share]]` entries: `institution` (Organization id) and/or `specialty`, and
    /// `percent`.
    #[serde(default)]
    share: Vec<ShareConfig>,
    /// The regional recognition list (检查检验结果互认): a file of the shipped list's shape.
    recognition_list: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareConfig {
    institution: Option<String>,
    specialty: Option<String>,
    percent: f64,
}

/// The pool's policy from the file's `[pool]` table; a share outside 0–100 % is an error.
fn pool(f: &PoolConfig) -> anyhow::Result<hutong_coordination::Policy> {
    let d = hutong_coordination::Policy::default();
    let per_mille = |p: f64| -> anyhow::Result<u32> {
        anyhow::ensure!(
            (0.0..=100.0).contains(&p),
            "a family-doctor share is a percent from 0 to 100, not {p}"
        );
        Ok((p * 10.0).round() as u32)
    };
    Ok(hutong_coordination::Policy {
        share_per_mille: match f.family_doctor_share {
            Some(p) => per_mille(p)?,
            None => d.share_per_mille,
        },
        release_ms: f
            .release_hours
            .map_or(d.release_ms, |h| (h * 3_600_000.0) as i64),
        hold_ms: f.hold_minutes.map_or(d.hold_ms, |m| (m * 60_000.0) as i64),
        referral_accept_ms: f
            .referral_accept_hours
            .map_or(d.referral_accept_ms, |h| (h * 3_600_000.0) as i64),
        overrides: f
            .share
            .iter()
            .map(|s| {
                Ok(hutong_coordination::ShareOverride {
                    institution: s.institution.clone(),
                    specialty: s.specialty.clone(),
                    share_per_mille: per_mille(s.percent)?,
                })
            })
            .collect::<anyhow::Result<_>>()?,
        recognition: match &f.recognition_list {
            None => d.recognition,
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading the recognition list {}", p.display()))?;
                hutong_coordination::recognition::List::parse(&text)
                    .with_context(|| format!("in the recognition list {}", p.display()))?
            }
        },
    })
}

const DEFAULT_SOURCE: &str = "urn:hutong:source:unspecified";

fn file_config(c: &Common) -> anyhow::Result<FileConfig> {
    let path = match &c.config {
        Some(p) => p.clone(),
        None if std::path::Path::new("hutong.toml").exists() => PathBuf::from("hutong.toml"),
        None => return Ok(FileConfig::default()),
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn database(c: &Common, f: &FileConfig) -> String {
    c.database_url
        .clone()
        .or_else(|| c.data_dir.clone())
        .or_else(|| f.database_url.clone())
        .or_else(|| f.data_dir.clone())
        .unwrap_or_else(|| "hutong-data".into())
}

/// The intake rules: the defaults, overridden by the rules file if one is configured.
fn rules(c: &Common, f: &FileConfig) -> anyhow::Result<hutong_quality::Rules> {
    match c.rules.as_ref().or(f.rules.as_ref()) {
        None => Ok(hutong_quality::Rules::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the rules file {}", p.display()))?;
            hutong_quality::Rules::from_toml(&text)
                .with_context(|| format!("in the rules file {}", p.display()))
        }
    }
}

fn settings(c: &Common, f: &FileConfig, s: Option<&ServeArgs>) -> anyhow::Result<Settings> {
    Ok(Settings {
        rules: rules(c, f)?,
        database: database(c, f),
        listen: s
            .and_then(|s| s.listen)
            .or(f.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("literal address")),
        body_limit: s
            .and_then(|s| s.body_limit)
            .or(f.body_limit)
            .unwrap_or(64 * 1024 * 1024),
        default_source: s
            .and_then(|s| s.default_source.clone())
            .or_else(|| f.default_source.clone())
            .unwrap_or_else(|| DEFAULT_SOURCE.into()),
        base_url: s
            .and_then(|s| s.base_url.clone())
            .or_else(|| f.base_url.clone()),
        export_dir: None,
        link_interval: match s.and_then(|s| s.link_interval_ms).or(f.link_interval_ms) {
            Some(0) => None,
            Some(ms) => Some(std::time::Duration::from_millis(ms)),
            None => Some(std::time::Duration::from_secs(2)),
        },
        source_trust: f.source_trust.clone(),
        mpi_index: match s.and_then(|s| s.mpi_index.as_deref()) {
            Some("memory") => Some(hutong_link::matching::IndexKind::Memory),
            Some(_) => Some(hutong_link::matching::IndexKind::Database),
            None => f.mpi_index,
        },
        thresholds: {
            let d = hutong_mpi::Thresholds::default();
            hutong_mpi::Thresholds {
                link: f.link_threshold.unwrap_or(d.link),
                review: f.review_threshold.unwrap_or(d.review),
                margin: f.link_margin.unwrap_or(d.margin),
                population: f.region_population.unwrap_or(d.population),
            }
        },
        keys_file: c.keys_file.clone().or_else(|| f.keys_file.clone()),
        policy: {
            let d = hutong_access::Policy::default();
            hutong_access::Policy {
                grant_ms: f.grant_hours.map_or(d.grant_ms, |h| h as i64 * 3_600_000),
                break_glass_ms: f
                    .break_glass_hours
                    .map_or(d.break_glass_ms, |h| h as i64 * 3_600_000),
                ..d
            }
        },
        dev_outbox: f.dev_outbox,
        checkpoint_interval: std::time::Duration::from_secs(
            f.checkpoint_seconds.unwrap_or(60).max(1),
        ),
        pool: pool(&f.pool)?,
        node: node(&f.node, s)?,
    })
}

/// The node settings: flags over the `[node]` table; none without a node id.
fn node(
    f: &NodeFileConfig,
    s: Option<&ServeArgs>,
) -> anyhow::Result<Option<hutong_exchange::node::Node>> {
    let pick = |flag: Option<&String>, file: &Option<String>| flag.or(file.as_ref()).cloned();
    let Some(id) = pick(s.and_then(|s| s.node_id.as_ref()), &f.id) else {
        anyhow::ensure!(
            s.and_then(|s| s.upstream.as_ref()).is_none() && f.upstream.is_none(),
            "an upstream needs a node id (--node-id): it is this node's client id there"
        );
        return Ok(None);
    };
    let level = pick(s.and_then(|s| s.node_level.as_ref()), &f.level)
        .context("a node needs its level (--node-level district|city|province)")?;
    let upstream = pick(s.and_then(|s| s.upstream.as_ref()), &f.upstream).map(|url| {
        hutong_exchange::node::Upstream {
            url,
            secret: pick(
                s.and_then(|s| s.upstream_secret.as_ref()),
                &f.upstream_secret,
            )
            .unwrap_or_default(),
        }
    });
    let district = pick(s.and_then(|s| s.node_district.as_ref()), &f.district);
    Ok(Some(hutong_exchange::node::Node::new(
        &id,
        &level,
        district,
        upstream,
        f.push.clone(),
    )?))
}

/// JSON in and out is allocation-heavy (a 2,000-entry bundle builds and drops millions of
/// small values); mimalloc's thread-local free lists cut the allocator's share of ingest.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUTONG_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let fc = file_config(&cli.common)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Serve(args) => rt.block_on(async {
            let s = settings(&cli.common, &fc, Some(&args))?;
            let app = Application::build(s.clone()).await?.with_routes(hutong_web::routes);
            tracing::info!(port = app.port(), database = %redact(&s.database), "Hutong is serving FHIR at http://{}/fhir", s.listen);
            app.run_until(hutong_server::shutdown_signal()).await?;
            Ok(())
        }),
        Cmd::Import { paths, source, indexes } => {
            let s = settings(&cli.common, &fc, None)?;
            let source = source.or(fc.default_source.clone()).unwrap_or_else(|| DEFAULT_SOURCE.into());
            import(&s, &paths, &source, indexes.into())
        }
        Cmd::Export { out, types, since } => {
            let s = settings(&cli.common, &fc, None)?;
            let since = since
                .map(|v| hutong_fhir::date::parse(&v).map(|r| r.lo).with_context(|| format!("invalid --since '{v}'")))
                .transpose()?;
            let engine = existing_engine(&s)?;
            let t0 = Instant::now();
            let written = hutong_server::engine::bulk::export(&engine, &out, &types, since)?;
            let total: u64 = written.iter().map(|(_, n)| n).sum();
            for (t, n) in &written {
                println!("{t:>28}  {n}");
            }
            println!("Exported {total} resources to {} in {:.1}s", out.display(), t0.elapsed().as_secs_f64());
            engine.audit.flush(std::time::Duration::from_secs(10));
            Ok(())
        }
        Cmd::Reconcile(args) => {
            let s = settings(&cli.common, &fc, None)?;
            let engine = existing_engine(&s)?;
            reconcile::run(&args, engine)
        }
        Cmd::Bench(args) => bench::run(args, &settings(&cli.common, &fc, None)?),
        Cmd::Synth(args) => synth::run(&args),
        Cmd::Check(args) => check::run(&args, &hutong_quality::Checker::new(rules(&cli.common, &fc)?)),
        Cmd::Demo(args) if args.levels => levels::run(args, &rt),
        Cmd::Demo(args) => demo::run(args, &rt),
        Cmd::Link(args) => link::run(&args),
        Cmd::Access(cmd) => admin::access(&settings(&cli.common, &fc, None)?, cmd),
        Cmd::Keys(cmd) => admin::keys(&settings(&cli.common, &fc, None)?, cmd),
        Cmd::Audit(cmd) => admin::audit(&settings(&cli.common, &fc, None)?, cmd),
    }
}

/// Hides a password in a database URL before it is logged.
fn redact(db: &str) -> String {
    match (db.find("://"), db.rfind('@')) {
        (Some(s), Some(at)) if db[s + 3..at].contains(':') => {
            let user_end = db[s + 3..at].find(':').map_or(at, |i| s + 3 + i);
            format!("{}:***{}", &db[..user_end], &db[at..])
        }
        _ => db.to_string(),
    }
}

/// Refuses when no store has been made where the settings point: a command that reads a
/// store must not create an empty one (and its keyring) and report on that.
fn require_store(s: &Settings) -> anyhow::Result<()> {
    let loc = s.location();
    let there = hutong_store::Store::exists(&loc)
        .with_context(|| format!("looking for a store at {}", redact(&s.database)))?;
    if !there {
        anyhow::bail!(
            "there is no Hutong store at {}: give its directory with --data-dir (or HUTONG_DATA_DIR) or its database with HUTONG_DATABASE_URL",
            redact(&s.database)
        );
    }
    Ok(())
}

/// The engine over an existing store (see [`require_store`]).
pub(crate) fn existing_engine(s: &Settings) -> anyhow::Result<hutong_server::Engine> {
    require_store(s)?;
    engine(s)
}

/// The engine over the configured store, for commands that work on it directly (as the
/// platform's operator: what they do is audited as such).
fn engine(s: &Settings) -> anyhow::Result<hutong_server::Engine> {
    let (store, keys) = hutong_server::open_store(&s.location(), s.keys_file.as_deref())
        .with_context(|| format!("opening {}", redact(&s.database)))?;
    let export_dir = std::env::temp_dir().join("hutong-exports");
    Ok(hutong_server::engine_for(
        store,
        keys,
        hutong_server::EngineConfig {
            default_source: s.default_source.clone(),
            export_dir,
            rules: s.rules.clone(),
            pool: s.pool.clone(),
        },
        "urn:hutong:platform",
        s.policy.clone(),
    )?)
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IndexMode {
    Auto,
    Defer,
    Keep,
}

impl From<IndexMode> for hutong_server::engine::bulk::Indexes {
    fn from(m: IndexMode) -> Self {
        match m {
            IndexMode::Auto => Self::Auto,
            IndexMode::Defer => Self::Defer,
            IndexMode::Keep => Self::Keep,
        }
    }
}

fn import(
    s: &Settings,
    paths: &[PathBuf],
    source: &str,
    indexes: hutong_server::engine::bulk::Indexes,
) -> anyhow::Result<()> {
    if paths.is_empty() {
        anyhow::bail!("nothing to import: give NDJSON files, bundles or directories");
    }
    let files = hutong_server::engine::bulk::collect_files(paths)?;
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let engine = engine(s)?;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {msg} ETA {eta}",
        )
        .expect("valid template"),
    );
    let t0 = Instant::now();
    let progress = |bytes: u64, n: u64| {
        bar.set_position(bytes);
        let rate = n as f64 / t0.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!("{n} resources, {rate:.0}/s"));
    };
    let report =
        hutong_server::engine::bulk::import_with(&engine, &files, source, indexes, &progress)?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "Loaded {} resources from {} files in {:.1}s ({:.0}/s); {} chunks were already loaded; {} rejected.",
        report.loaded,
        report.files,
        secs,
        report.loaded as f64 / secs.max(1e-3),
        report.skipped_chunks,
        report.rejected.len()
    );
    // Contracts loaded in bulk bring their centres' standing authorizations along.
    let contracts = hutong_server::coordination::standing::sync_all(&engine)
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    if contracts > 0 {
        println!(
            "{contracts} family-doctor contracts: their centres' authorizations are in force."
        );
    }
    engine.audit.flush(std::time::Duration::from_secs(10));
    for (f, line, why) in report.rejected.iter().take(50) {
        println!("  rejected {f}:{line}: {why}");
    }
    if report.rejected.len() > 50 {
        println!("  … and {} more", report.rejected.len() - 50);
    }
    if !report.unresolved.is_empty() {
        println!(
            "{} loaded resources still reference something the platform does not hold (recorded as findings for the source):",
            report.unresolved.len()
        );
        for (f, line, why) in report.unresolved.iter().take(20) {
            println!("  {f}:{line}: {why}");
        }
    }
    Ok(())
}

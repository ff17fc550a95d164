//! `hutong demo`: a synthetic region generated, loaded into a fresh embedded store and
//! served, with a printed guide of what to open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use hutong_server::{Application, Engine, EngineConfig, Settings};
use hutong_store::{Location, Store};

const MARKER: &str = ".hutong-demo";

#[derive(Args)]
pub struct DemoArgs {
    /// Residents in the demo region.
    #[arg(long, default_value_t = 2_000)]
    residents: u64,
    /// Institutions in the demo region.
    #[arg(long, default_value_t = 12)]
    institutions: usize,
    /// Years of history.
    #[arg(long, default_value_t = 3)]
    years: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Working directory for the region and its store; a previous demo there is replaced.
    #[arg(long, default_value = "hutong-demo")]
    dir: PathBuf,
    /// Address to serve on (port 0 picks a free port).
    #[arg(long, env = "HUTONG_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            anyhow::bail!(
                "{} holds files that are not a Hutong demo; choose another --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "A Hutong demo directory: `hutong demo` replaces it.\n",
    )?;
    Ok(())
}

fn load(engine: &Engine, summary: &hutong_synth::Summary, region: &Path) -> anyhow::Result<u64> {
    let mut batches = vec![(
        "urn:hutong:registry".to_string(),
        vec![region.join("registry")],
    )];
    for i in &summary.institutions {
        batches.push((i.source.clone(), vec![i.dir.clone()]));
    }
    let mut files = Vec::new();
    for (source, paths) in &batches {
        files.push((source, hutong_server::bulk::collect_files(paths)?));
    }
    let total: u64 = files
        .iter()
        .flat_map(|(_, f)| f.iter())
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} loading [{elapsed_precise}] {bar:40} {msg}",
        )
        .expect("valid template"),
    );
    let t0 = Instant::now();
    let mut base = (0u64, 0u64);
    let mut rejected = 0;
    for (source, f) in files {
        let progress = |bytes: u64, n: u64| {
            bar.set_position(base.0 + bytes);
            let done = base.1 + n;
            let rate = done as f64 / t0.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{done} resources, {rate:.0}/s"));
        };
        let report = hutong_server::bulk::import(engine, &f, source, &progress)?;
        base.0 += f
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum::<u64>();
        base.1 += report.loaded;
        rejected += report.rejected.len();
    }
    bar.finish_and_clear();
    println!(
        "Loaded {} resources in {:.1}s{}.",
        base.1,
        t0.elapsed().as_secs_f64(),
        if rejected > 0 {
            format!(" ({rejected} rejected)")
        } else {
            String::new()
        }
    );
    Ok(base.1)
}

/// A resident seen at the most institutions, with their ID number, name, and patient ids.
fn example(region: &Path) -> anyhow::Result<(String, String, Vec<String>)> {
    let persons = std::fs::read_to_string(region.join("truth/persons.csv"))?;
    let mut by_person: HashMap<&str, Vec<&str>> = HashMap::new();
    for l in persons.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        by_person.entry(f[2]).or_default().push(f[1]);
    }
    let residents = std::fs::read_to_string(region.join("truth/residents.csv"))?;
    let best = residents
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<&str>>())
        .max_by_key(|f| {
            (
                by_person.get(f[0]).map_or(0, Vec::len),
                std::cmp::Reverse(f[0].to_string()),
            )
        })
        .context("the region has no residents")?;
    let patients = by_person.get(best[0]).cloned().unwrap_or_default();
    Ok((
        best[1].to_string(),
        best[4].to_string(),
        patients.into_iter().map(String::from).collect(),
    ))
}

pub fn run(args: DemoArgs, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    fresh_dir(&args.dir)?;
    let region = args.dir.join("region");
    let cfg = hutong_synth::Config {
        residents: args.residents,
        institutions: args.institutions,
        years: args.years,
        seed: args.seed,
        ..hutong_synth::Config::default()
    };
    println!(
        "Generating a synthetic region: {} residents, {} institutions, {} years of records…",
        cfg.residents, cfg.institutions, cfg.years
    );
    let (summary, secs) = crate::synth::generate(&cfg, &region)?;
    println!(
        "Generated {} resources ({} institution patients) in {secs:.1}s.",
        summary.resources, summary.patients
    );
    let store_dir = args.dir.join("store");
    let store = Store::open(&Location::Sqlite(store_dir.clone()))
        .with_context(|| format!("opening {}", store_dir.display()))?;
    let engine = Engine::new(
        store.clone(),
        EngineConfig {
            default_source: "urn:hutong:demo".into(),
            export_dir: store_dir.join("exports"),
        },
    );
    load(&engine, &summary, &region)?;
    drop(engine);
    let (name, id_number, patients) = example(&region)?;
    rt.block_on(async move {
        let settings = Settings {
            database: store_dir.display().to_string(),
            listen: args.listen,
            body_limit: 64 * 1024 * 1024,
            default_source: "urn:hutong:demo".into(),
            base_url: None,
            export_dir: None,
            link_interval: Some(std::time::Duration::from_secs(2)),
            source_trust: Default::default(),
            thresholds: Default::default(),
        };
        let app = Application::with_store(settings, store).await?;
        eprintln!("Linking every institution's Patients to persons (one person, one record)…");
        let engine = app.engine.clone();
        let first = patients.first().map(|p| format!("Patient/{p}"));
        let person = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<String>> {
            engine.matcher.sync(&engine.store)?;
            Ok(match first {
                Some(p) => engine
                    .matcher
                    .view(&engine.store, |reg| reg.person_of(&p).map(String::from))?,
                None => None,
            })
        })
        .await??;
        let base = format!("http://{}:{}/fhir", args.listen.ip(), app.port());
        println!();
        println!("Hutong demo is serving FHIR R4 at {base}");
        println!();
        println!("Try:");
        println!("  {base}/metadata");
        println!("  {base}/Organization                         the region's {} institutions", summary.institutions.len());
        println!("  {base}/Patient?name={name}                    namesakes across institutions");
        println!("  {base}/Patient?identifier={}|{id_number}", hutong_synth::ID_SYSTEM);
        println!("                                              {name}, as each institution registered them");
        if let Some(p) = patients.first() {
            println!("  {base}/Patient/{p}/$everything");
        }
        if let Some(person) = &person {
            println!("  {base}/Person/{person}/$everything");
            println!("                                              {name}'s one record, from every institution, in time order");
            println!("  {base}/Person/{person}/$summary");
            println!("  {base}/Patient/$ihe-pix?sourceIdentifier={}|{id_number}", hutong_synth::ID_SYSTEM);
        }
        println!("  {base}/Task?code={}|{}&status=requested", hutong_server::persons::IDENTITY_CS, hutong_server::persons::REVIEW_CODE);
        println!("                                              possible duplicates waiting for review");
        println!("  {base}/Observation?code=http://loinc.org|4548-4&_sort=-date&_count=10");
        println!("  {base}/Encounter?class=IMP&_include=Encounter:subject&_count=5");
        println!();
        println!("The region and its ground truth (residents, patient→person links, injected");
        println!("defects, per-day manifest) are in {}.", region.display());
        println!("Press Ctrl-C to stop.");
        app.run_until(hutong_server::shutdown_signal()).await?;
        Ok(())
    })
}

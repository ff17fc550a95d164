//! `hutong reconcile`: compares what a source sent (its NDJSON files or bundles, or a
//! manifest it prepared) with what the platform holds from it for a period, prints the
//! differences and writes the resources to resend. The same comparison as `POST $reconcile`,
//! run on the store directly as the platform's operator.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use hutong_quality::reconcile::{Item, Manifest};
use hutong_server::Engine;
use serde_json::Value;

#[derive(Args)]
pub struct ReconcileArgs {
    /// The source's NDJSON files, bundles or directories of them.
    pub paths: Vec<PathBuf>,
    /// The submitting institution (`meta.source` of its data on the platform).
    #[arg(long, env = "HUTONG_SOURCE")]
    pub source: String,
    /// First day of the period (YYYY-MM-DD, clinical time, UTC+8); default: the earliest
    /// day in the files.
    #[arg(long)]
    pub from: Option<String>,
    /// Last day of the period; default: the latest day in the files.
    #[arg(long)]
    pub to: Option<String>,
    /// Also compare resources without a clinical time (patients, organisations…).
    #[arg(long)]
    pub undated: bool,
    /// A manifest the source prepared (JSON) instead of files.
    #[arg(long, conflicts_with = "paths")]
    pub manifest: Option<PathBuf>,
    /// Send counts and hashes per type and day instead of every id (large periods).
    #[arg(long)]
    pub compact: bool,
    /// Write the report (report.json) and the resources to resend (resend.ndjson) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Reads every resource of the files (bundle entries included).
fn resources(paths: &[PathBuf]) -> anyhow::Result<Vec<Value>> {
    let files = hutong_server::engine::bulk::collect_files(paths)?;
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::File::open(&f).with_context(|| format!("reading {}", f.display()))?;
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "json" {
            let v: Value = serde_json::from_reader(std::io::BufReader::new(text))
                .with_context(|| format!("parsing {}", f.display()))?;
            if v["resourceType"] == "Bundle" {
                for e in v["entry"].as_array().into_iter().flatten() {
                    if e["resource"].is_object() {
                        out.push(e["resource"].clone());
                    }
                }
            } else {
                out.push(v);
            }
            continue;
        }
        for (n, line) in std::io::BufReader::new(text).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            out.push(
                serde_json::from_str(&line)
                    .with_context(|| format!("{}:{}: not JSON", f.display(), n + 1))?,
            );
        }
    }
    Ok(out)
}

pub fn run(args: &ReconcileArgs, engine: Engine) -> anyhow::Result<()> {
    let (manifest, sent) = match &args.manifest {
        Some(p) => {
            let text = std::fs::read(p)
                .with_context(|| format!("reading the manifest {}", p.display()))?;
            let m: Manifest = serde_json::from_slice(&text)
                .with_context(|| format!("parsing the manifest {}", p.display()))?;
            (m, Vec::new())
        }
        None => {
            if args.paths.is_empty() {
                anyhow::bail!("give the source's files (or --manifest FILE)");
            }
            let sent = resources(&args.paths)?;
            let items: Vec<Item> = sent.iter().filter_map(Item::of).collect();
            let days: Vec<&str> = items
                .iter()
                .map(|i| i.day.as_str())
                .filter(|d| *d != "-")
                .collect();
            let from = args
                .from
                .clone()
                .or_else(|| days.iter().min().map(|d| d.to_string()))
                .context("no resource has a clinical time: give --from and --to")?;
            let to = args
                .to
                .clone()
                .or_else(|| days.iter().max().map(|d| d.to_string()))
                .context("give --to")?;
            (
                Manifest::build(&from, &to, args.undated, &items, args.compact),
                sent,
            )
        }
    };
    let g = hutong_server::guard::Guard::platform(&engine, "hutong reconcile", "reconcile");
    let run = hutong_server::governance::reconcile::run(&engine, &g, &args.source, &manifest)
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    g.finish(&engine, 200, None);
    engine.audit.flush(std::time::Duration::from_secs(10));
    let d = &run.differences;
    println!(
        "Reconciliation {} of {} for {} … {}: {} matched, {} missing on the platform, {} extra on the platform, {} differ{}",
        run.id,
        args.source,
        manifest.from,
        manifest.to,
        d.matched,
        d.missing.len(),
        d.extra.len(),
        d.differs.len(),
        if d.days.is_empty() {
            String::new()
        } else {
            format!(", {} days differ", d.days.len())
        }
    );
    for (what, list) in [
        ("missing", &d.missing),
        ("extra", &d.extra),
        ("differs", &d.differs),
    ] {
        for k in list.iter().take(20) {
            println!("  {what:8} {}/{}", k.rtype, k.id);
        }
        if list.len() > 20 {
            println!("  {what:8} … and {} more", list.len() - 20);
        }
    }
    for day in d.days.iter().take(20) {
        println!(
            "  day      {} {}: source {} / platform {}",
            day.rtype, day.day, day.source_count, day.platform_count
        );
    }
    if let Some(w) = &run.work_order {
        println!("Work order Task/{w} opened to the source for the gaps.");
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        let report = serde_json::json!({"id": run.id, "source": args.source,
            "from": manifest.from, "to": manifest.to, "differences": d});
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
        // What the platform lacks or holds differently, as the source has it: resend these.
        let wanted: std::collections::HashSet<(String, String)> = d
            .missing
            .iter()
            .chain(&d.differs)
            .map(|k| (k.rtype.clone(), k.id.clone()))
            .collect();
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("resend.ndjson"))?);
        let mut n = 0;
        for v in &sent {
            let k = (
                v["resourceType"].as_str().unwrap_or("").to_string(),
                v["id"].as_str().unwrap_or("").to_string(),
            );
            if wanted.contains(&k) {
                serde_json::to_writer(&mut f, v)?;
                f.write_all(b"\n")?;
                n += 1;
            }
        }
        f.flush()?;
        println!(
            "Wrote {} and {} ({n} resources to resend).",
            dir.join("report.json").display(),
            dir.join("resend.ndjson").display()
        );
    }
    Ok(())
}

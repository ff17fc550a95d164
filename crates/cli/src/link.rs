//! `hutong link`: batch record linkage of any CSV of demographics (or of a synthetic region's
//! Patients), writing `record_id,cluster_id`; with a truth column, the pairwise precision and
//! recall and the hardest errors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use hutong_mpi::{compare, eval, Raw, Record, Thresholds};

#[derive(Args)]
pub struct LinkArgs {
    /// CSV file with a header row.
    input: Option<PathBuf>,
    /// Column holding each record's id.
    #[arg(long)]
    id: Option<String>,
    /// KIND=COLUMN (repeatable; several columns of one kind are joined). Kinds: name, family,
    /// given, sex, birth_date, id_number, phone, address, address_line, district, city,
    /// postcode, state.
    #[arg(long = "field", value_name = "KIND=COLUMN")]
    fields: Vec<String>,
    /// Format of birth dates, with %Y %m %d (default: ISO or YYYYMMDD).
    #[arg(long)]
    date_format: Option<String>,
    /// Link the Patients of a synthetic region (`hutong synth --out DIR`) and score against its truth.
    #[arg(long, conflicts_with = "input")]
    synth: Option<PathBuf>,
    /// Column with the true entity, to report precision and recall.
    #[arg(long)]
    truth: Option<String>,
    /// Output: record_id,cluster_id.
    #[arg(long)]
    out: PathBuf,
    /// Pairs between the thresholds that were not linked: record_a,record_b,log2_odds.
    #[arg(long)]
    review_out: Option<PathBuf>,
    /// log2 posterior odds for an automatic link (default: 8 for Chinese records, 20 for
    /// Western ones, whose name and address parts are weighed as separate fields).
    #[arg(long)]
    link_threshold: Option<f64>,
    /// log2 posterior odds for the review queue (default: -2 for Chinese records, 10 for
    /// Western ones).
    #[arg(long)]
    review_threshold: Option<f64>,
}

const KINDS: &[&str] = &[
    "name",
    "family",
    "given",
    "sex",
    "birth_date",
    "id_number",
    "phone",
    "address",
    "address_line",
    "district",
    "city",
    "postcode",
    "state",
];

/// Converts a date written in `fmt` (%Y %m %d and literal characters) to `YYYY-MM-DD`.
fn reformat_date(s: &str, fmt: &str) -> Option<String> {
    let (mut y, mut m, mut d) = (None, None, None);
    let mut rest = s.trim();
    let mut f = fmt.chars().peekable();
    while let Some(c) = f.next() {
        if c == '%' {
            let spec = f.next()?;
            let max = if spec == 'Y' { 4 } else { 2 };
            let n = rest
                .chars()
                .take(max)
                .take_while(char::is_ascii_digit)
                .count();
            let v: u32 = rest[..n].parse().ok()?;
            rest = &rest[n..];
            match spec {
                'Y' => y = Some(v),
                'm' => m = Some(v),
                'd' => d = Some(v),
                _ => return None,
            }
        } else {
            rest = rest.strip_prefix(c)?;
        }
    }
    Some(format!("{:04}-{:02}-{:02}", y?, m?, d?))
}

pub struct Input {
    pub ids: Vec<String>,
    pub records: Vec<Record>,
    pub truth: Option<Vec<String>>,
    /// Text shown for a record in error listings.
    show: Vec<String>,
}

fn from_csv(a: &LinkArgs, path: &PathBuf) -> anyhow::Result<Input> {
    let id_col =
        a.id.as_deref()
            .context("--id COLUMN is required with a CSV input")?;
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let headers: Vec<String> = rdr
        .headers()?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let col = |name: &str| -> anyhow::Result<usize> {
        headers.iter().position(|h| h == name).with_context(|| {
            format!(
                "no column '{name}' in {} (columns: {})",
                path.display(),
                headers.join(", ")
            )
        })
    };
    let id_i = col(id_col)?;
    let mut kinds: Vec<(String, Vec<usize>)> = Vec::new();
    for f in &a.fields {
        let (kind, column) = f
            .split_once('=')
            .with_context(|| format!("--field {f}: expected KIND=COLUMN"))?;
        if !KINDS.contains(&kind) {
            bail!(
                "--field {f}: unknown kind '{kind}' (kinds: {})",
                KINDS.join(", ")
            );
        }
        let c = col(column)?;
        match kinds.iter_mut().find(|(k, _)| k == kind) {
            Some((_, cols)) => cols.push(c),
            None => kinds.push((kind.to_string(), vec![c])),
        }
    }
    if kinds.is_empty() {
        bail!("give at least one --field KIND=COLUMN");
    }
    let truth_i = a.truth.as_deref().map(col).transpose()?;
    let mut input = Input {
        ids: Vec::new(),
        records: Vec::new(),
        truth: truth_i.map(|_| Vec::new()),
        show: Vec::new(),
    };
    for (line, row) in rdr.records().enumerate() {
        let row = row.with_context(|| format!("{}: row {}", path.display(), line + 2))?;
        let get = |cols: &[usize]| -> Option<String> {
            let parts: Vec<&str> = cols
                .iter()
                .filter_map(|c| row.get(*c))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        };
        let mut raw = Raw::default();
        for (kind, cols) in &kinds {
            let v = get(cols);
            match kind.as_str() {
                "name" => raw.name = v,
                "family" => raw.family = v,
                "given" => raw.given = v,
                "sex" => raw.sex = v,
                "birth_date" => {
                    raw.birth_date = match (&a.date_format, v) {
                        (Some(f), Some(v)) => reformat_date(&v, f),
                        (None, v) => v,
                        (_, None) => None,
                    }
                }
                "id_number" => raw.id_number = v,
                "phone" => raw.phone = v,
                "address" | "address_line" => raw.address_line = v,
                "district" => raw.district = v,
                "city" => raw.city = v,
                "postcode" => raw.postcode = v,
                _ => raw.state = v,
            }
        }
        input
            .ids
            .push(row.get(id_i).unwrap_or("").trim().to_string());
        input.show.push(
            kinds
                .iter()
                .filter_map(|(_, c)| get(c))
                .collect::<Vec<_>>()
                .join(" | "),
        );
        if let (Some(t), Some(i)) = (input.truth.as_mut(), truth_i) {
            t.push(row.get(i).unwrap_or("").to_string());
        }
        input.records.push(raw.normalize());
    }
    Ok(input)
}

pub fn from_synth(dir: &std::path::Path) -> anyhow::Result<Input> {
    let persons = std::fs::read_to_string(dir.join("truth/persons.csv")).with_context(|| {
        format!(
            "{} is not a synthetic region (no truth/persons.csv)",
            dir.display()
        )
    })?;
    let truth: HashMap<(String, String), String> = persons
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() == 3).then(|| ((f[0].to_string(), f[1].to_string()), f[2].to_string()))
        })
        .collect();
    let mut input = Input {
        ids: Vec::new(),
        records: Vec::new(),
        truth: Some(Vec::new()),
        show: Vec::new(),
    };
    let mut insts: Vec<PathBuf> = std::fs::read_dir(dir.join("institutions"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    insts.sort();
    for inst in insts {
        let code = inst
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let Ok(text) = std::fs::read_to_string(inst.join("Patient.ndjson")) else {
            continue;
        };
        for line in text.lines() {
            let p: serde_json::Value = serde_json::from_str(line)?;
            let id = p["id"].as_str().unwrap_or("").to_string();
            let raw = hutong_mpi::fhir::raw_from_patient(&p);
            input.show.push(format!(
                "{} | {} | {} | {} | {}",
                raw.name.as_deref().unwrap_or("-"),
                raw.birth_date.as_deref().unwrap_or("-"),
                raw.id_number.as_deref().unwrap_or("-"),
                raw.phone.as_deref().unwrap_or("-"),
                raw.address_line
                    .as_deref()
                    .or(raw.district.as_deref())
                    .unwrap_or("-")
            ));
            input.records.push(raw.normalize());
            if let Some(t) = input.truth.as_mut() {
                t.push(
                    truth
                        .get(&(code.clone(), id.clone()))
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            input.ids.push(id);
        }
    }
    Ok(input)
}

pub fn run(a: &LinkArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner.set_message("reading and normalising records…");
    let input = match (&a.synth, &a.input) {
        (Some(dir), _) => from_synth(dir)?,
        (None, Some(path)) => from_csv(a, path)?,
        (None, None) => bail!("give a CSV file (with --id and --field) or --synth DIR"),
    };
    let read_secs = t0.elapsed().as_secs_f64();
    spinner.set_message(format!("linking {} records…", input.records.len()));
    let t1 = Instant::now();
    let profile = Thresholds::for_profile(hutong_mpi::compare::profile_of(&input.records));
    let thresholds = Thresholds {
        link: a.link_threshold.unwrap_or(profile.link),
        review: a.review_threshold.unwrap_or(profile.review),
        ..profile
    };
    let linked = hutong_mpi::link(&input.records, Some(thresholds));
    let link_secs = t1.elapsed().as_secs_f64();
    spinner.finish_and_clear();

    let c = &linked.clustering;
    let mut w =
        csv::Writer::from_path(&a.out).with_context(|| format!("writing {}", a.out.display()))?;
    w.write_record(["record_id", "cluster_id"])?;
    for (i, id) in input.ids.iter().enumerate() {
        w.write_record([id.as_str(), input.ids[c.cluster[i] as usize].as_str()])?;
    }
    w.flush()?;
    if let Some(path) = &a.review_out {
        let mut w = csv::Writer::from_path(path)?;
        w.write_record(["record_a", "record_b", "log2_odds"])?;
        for p in &c.review {
            w.write_record([
                &input.ids[p.a as usize],
                &input.ids[p.b as usize],
                &format!("{:.2}", p.odds),
            ])?;
        }
        w.flush()?;
    }
    let n = input.records.len();
    let clusters = {
        let mut v = c.cluster.clone();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    println!(
        "Linked {n} records into {clusters} clusters in {:.2}s ({:.0} records/s; reading {:.2}s): {} candidate pairs, {} links, {} pairs for review, {} links refused (different valid ID numbers).",
        link_secs,
        n as f64 / link_secs.max(1e-6),
        read_secs,
        linked.candidates,
        c.linked_pairs,
        c.review.len(),
        c.refused_conflicts
    );
    println!(
        "Model (EM, {} iterations, match share among candidates {:.3}):",
        linked.model.em_iterations, linked.model.p
    );
    for f in 0..compare::FIELDS {
        let weights: Vec<String> = (0..compare::LEVELS[f])
            .map(|l| format!("{:+.1}", linked.model.weight(f, l as u8)))
            .collect();
        println!("  {:<13} {}", compare::FIELD_NAMES[f], weights.join(" "));
    }
    println!("Wrote {}", a.out.display());
    if let Some(truth) = &input.truth {
        let counts = eval::pairwise(&c.cluster, truth);
        println!(
            "Against the truth (pairwise): precision {:.4}, recall {:.4}, F1 {:.4} — {} true links, {} false links, {} missed.",
            counts.precision(),
            counts.recall(),
            counts.f1(),
            counts.true_positive,
            counts.false_positive,
            counts.false_negative
        );
        hardest_errors(&input, &linked, truth, thresholds.population);
    }
    Ok(())
}

/// The false links with the highest odds and the missed pairs with the lowest.
fn hardest_errors(input: &Input, linked: &hutong_mpi::Linked, truth: &[String], population: f64) {
    let c = &linked.clustering;
    let scored = hutong_mpi::cluster::score_pairs(
        &input.records,
        &linked.model,
        &hutong_mpi::block::candidates(&input.records, linked.model.profile),
        population,
    );
    let mut false_links: Vec<&hutong_mpi::ScoredPair> = scored
        .iter()
        .filter(|p| {
            c.cluster[p.a as usize] == c.cluster[p.b as usize]
                && truth[p.a as usize] != truth[p.b as usize]
        })
        .collect();
    false_links.sort_by(|x, y| y.odds.total_cmp(&x.odds));
    let mut missed: Vec<&hutong_mpi::ScoredPair> = scored
        .iter()
        .filter(|p| {
            c.cluster[p.a as usize] != c.cluster[p.b as usize]
                && truth[p.a as usize] == truth[p.b as usize]
        })
        .collect();
    missed.sort_by(|x, y| y.odds.total_cmp(&x.odds));
    let show = |title: &str, v: &[&hutong_mpi::ScoredPair]| {
        if v.is_empty() {
            return;
        }
        println!("{title}:");
        for p in v.iter().take(8) {
            println!(
                "  {:+.1}  {}  ~  {}",
                p.odds, input.show[p.a as usize], input.show[p.b as usize]
            );
        }
    };
    show(
        "Hardest false links (different people joined)",
        &false_links,
    );
    show(
        "Hardest misses among candidate pairs (same person kept apart)",
        &missed,
    );
}

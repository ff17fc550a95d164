//! `hutong check PATH… [--truth defects.csv]`: the intake rules run over NDJSON files before
//! they are sent (a source's pre-flight check), with references, encounters and duplicates
//! resolved among the files themselves. With the generator's truth file it reports, per
//! defect kind, how many injected defects the rules catch and how many clean resources they
//! flag.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hutong_quality::{Checker, Context, Finding};
use serde_json::Value;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// NDJSON files or directories of them (a directory per institution: its name is the source).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The generator's `truth/defects.csv`: score the rules against the injected defects.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Print every finding (otherwise counts per rule).
    #[arg(long)]
    pub verbose: bool,
}

/// Resources of the checked files: what the context rules look up.
struct Files {
    ids: HashSet<(String, String)>,
    encounters: HashMap<String, String>,
    /// (source, type, fingerprint) → id
    content: HashMap<(String, String, String), String>,
    /// The source of the resource being checked.
    source: String,
    misfiled: HashMap<String, String>,
    births: HashMap<String, String>,
    doses: HashMap<String, Vec<hutong_quality::Dose>>,
}

impl Context for Files {
    fn encounter_misfiled(&self, id: &str) -> Option<String> {
        self.misfiled.get(id).cloned()
    }
    fn exists(&self, rtype: &str, id: &str) -> bool {
        self.ids.contains(&(rtype.to_string(), id.to_string()))
    }
    fn encounter_subject(&self, id: &str) -> Option<String> {
        self.encounters.get(id).cloned()
    }
    fn patient_birth(&self, id: &str) -> Option<String> {
        self.births.get(id).cloned()
    }
    fn doses(&self, patient: &str) -> Vec<hutong_quality::Dose> {
        self.doses.get(patient).cloned().unwrap_or_default()
    }
    fn same_content(&self, rtype: &str, fp: &str) -> Option<String> {
        self.content
            .get(&(self.source.clone(), rtype.to_string(), fp.to_string()))
            .cloned()
    }
}

fn ndjson_files(p: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .with_context(|| format!("reading {}", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            ndjson_files(&e, out)?;
        }
    } else if p.extension().and_then(|x| x.to_str()) == Some("ndjson") {
        out.push(p.to_path_buf());
    } else if !p.exists() {
        anyhow::bail!("{} does not exist", p.display());
    }
    Ok(())
}

pub fn run(args: &CheckArgs, checker: &Checker) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for p in &args.paths {
        ndjson_files(p, &mut files)?;
    }
    // (source directory, resource)
    let mut resources: Vec<(String, Value)> = Vec::new();
    let mut unreadable = 0usize;
    for f in &files {
        let source = f
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        let file = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => resources.push((source.clone(), v)),
                Err(_) => unreadable += 1,
            }
        }
    }
    let mut held = Files {
        ids: HashSet::new(),
        encounters: HashMap::new(),
        content: HashMap::new(),
        source: String::new(),
        misfiled: HashMap::new(),
        births: HashMap::new(),
        doses: HashMap::new(),
    };
    for (_, v) in &resources {
        let (Some(t), Some(id)) = (v["resourceType"].as_str(), v["id"].as_str()) else {
            continue;
        };
        held.ids.insert((t.to_string(), id.to_string()));
        if t == "Encounter" {
            if let Some(s) = v["subject"]["reference"].as_str() {
                held.encounters.insert(id.to_string(), s.to_string());
            }
        }
        if let (Some(d), Some(p)) = (
            hutong_quality::Dose::of(v),
            v["patient"]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix("Patient/")),
        ) {
            held.doses.entry(p.to_string()).or_default().push(d);
        }
        if t == "Patient" {
            if let Some(b) = hutong_quality::birth_of(v) {
                held.births.insert(id.to_string(), b);
            }
        }
    }
    let all: Vec<&Value> = resources.iter().map(|(_, v)| v).collect();
    held.misfiled = hutong_quality::misfiled_encounters(&all, &|e| held.encounters.get(e).cloned());
    let now = hutong_fhir::date::now_ms();
    let t0 = std::time::Instant::now();
    let mut flagged: HashMap<(String, String, String), Vec<Finding>> = HashMap::new();
    let mut by_rule: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    for (source, v) in &resources {
        let rtype = v["resourceType"].as_str().unwrap_or("").to_string();
        let id = v["id"].as_str().unwrap_or("").to_string();
        let mut f = checker.check(v, now);
        // Duplicates are within a source: the fingerprints are keyed by it.
        held.source = source.clone();
        f.extend(checker.check_context(v, &held));
        let fp = hutong_quality::fingerprint(v);
        held.content
            .entry((source.clone(), rtype.clone(), fp))
            .or_insert(id.clone());
        for x in &f {
            let e = by_rule.entry(x.rule).or_default();
            match x.severity {
                hutong_quality::Severity::Error => e.0 += 1,
                hutong_quality::Severity::Warning => e.1 += 1,
            }
            if args.verbose {
                println!(
                    "{source}\t{rtype}/{id}\t{}\t{}\t{}\t{}",
                    x.severity.as_str(),
                    x.rule,
                    x.expression,
                    x.en
                );
            }
        }
        if !f.is_empty() {
            flagged.insert((source.clone(), rtype, id), f);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let rejected = flagged
        .values()
        .filter(|f| hutong_quality::rejects(f))
        .count();
    println!(
        "Checked {} resources from {} files in {secs:.1}s ({:.0}/s): {} would be rejected, {} accepted with warnings{}.",
        resources.len(),
        files.len(),
        resources.len() as f64 / secs.max(1e-9),
        rejected,
        flagged.len() - rejected,
        if unreadable > 0 { format!(", {unreadable} lines not JSON") } else { String::new() }
    );
    println!("{:<20} {:>8} {:>8}", "rule", "errors", "warnings");
    for (rule, (e, w)) in &by_rule {
        println!("{rule:<20} {e:>8} {w:>8}");
    }
    if let Some(truth) = &args.truth {
        // Scoring the rules against injected defects: rejections are what is measured.
        return score(truth, &resources, &flagged);
    }
    // A gate before sending: it fails when the platform would refuse anything.
    if rejected > 0 || unreadable > 0 {
        anyhow::bail!(
            "{rejected} resources would be rejected and {unreadable} lines are not JSON: correct them before sending"
        );
    }
    Ok(())
}

/// Detection per defect kind and false positives on clean resources.
fn score(
    truth: &Path,
    resources: &[(String, Value)],
    flagged: &HashMap<(String, String, String), Vec<Finding>>,
) -> anyhow::Result<()> {
    let mut rdr =
        csv::Reader::from_path(truth).with_context(|| format!("reading {}", truth.display()))?;
    // (institution, type, id) → (class, kind)
    let mut defects: HashMap<(String, String, String), Vec<(String, String)>> = HashMap::new();
    for rec in rdr.records() {
        let r = rec?;
        defects
            .entry((r[0].to_string(), r[1].to_string(), r[2].to_string()))
            .or_default()
            .push((r[3].to_string(), r[4].to_string()));
    }
    let mut kinds: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let (mut clean, mut clean_flagged) = (0u64, 0u64);
    let mut fp_rules: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (source, v) in resources {
        let key = (
            source.clone(),
            v["resourceType"].as_str().unwrap_or("").to_string(),
            v["id"].as_str().unwrap_or("").to_string(),
        );
        let hit = flagged.get(&key);
        match defects.get(&key) {
            None => {
                clean += 1;
                if let Some(f) = hit {
                    clean_flagged += 1;
                    for x in f {
                        *fp_rules.entry(x.rule).or_default() += 1;
                    }
                }
            }
            Some(ds) => {
                for (class, kind) in ds {
                    if class != "quality" {
                        continue;
                    }
                    let e = kinds.entry(kind.clone()).or_default();
                    e.0 += 1;
                    if hit.is_some() {
                        e.1 += 1;
                    }
                }
            }
        }
    }
    println!("\nInjected defects found (resource flagged by any rule):");
    println!(
        "{:<20} {:>8} {:>8} {:>8}",
        "kind", "injected", "found", "recall"
    );
    for (k, (n, found)) in &kinds {
        println!(
            "{k:<20} {n:>8} {found:>8} {:>8.4}",
            *found as f64 / (*n).max(1) as f64
        );
    }
    println!(
        "Clean resources flagged: {clean_flagged} of {clean} ({:.3} %)",
        100.0 * clean_flagged as f64 / clean.max(1) as f64
    );
    for (rule, n) in fp_rules {
        println!("  by {rule}: {n}");
    }
    Ok(())
}

//! Bulk loading (`hutong import`) and dumping (`hutong export`) of files.
//!
//! Import is resumable: every chunk of a file ([`CHUNK`] NDJSON lines, or one bundle) commits
//! in one transaction together with a row in `import_done`, so a re-run after a crash or
//! Ctrl-C skips exactly what was committed and loads nothing twice.
//!
//! One file past the ~800 lines we keep to, because the import is one pipeline (check, prepare
//! and commit chunks in flight) whose stages share private types; split, they would need a
//! public surface nobody else uses.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use hutong_fhir::date::now_ms;
use hutong_fhir::json::Fields;
use hutong_fhir::Definitions;
use hutong_store::sql::Val;
use serde_json::Value;

use crate::engine::write::Submission;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::guard::Guard;
use crate::wire::{check_resource, Body, Req};

/// NDJSON lines per transaction. Each transaction writes every page it dirtied to the WAL,
/// and the value-first indexes dirty a page per row wherever the value falls: five times
/// the lines per transaction wrote a quarter less to disk on a 1.34 M-resource load.
pub const CHUNK: usize = 5000;
/// The chunk size before [`CHUNK`] grew to it: a file whose load began under it is resumed
/// under it, since its `import_done` rows count chunks of that size.
const LEGACY_CHUNK: usize = 1000;

/// Whether an import drops the value indexes while it loads and builds them at the end
/// ([`hutong_store::Store::defer_value_indexes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Indexes {
    /// Defer them when the files are larger than the store and [`DEFER_FROM`] at least.
    #[default]
    Auto,
    Defer,
    Keep,
}

/// The least input (bytes) [`Indexes::Auto`] defers the value indexes for: below it,
/// keeping them costs less than building them again.
pub const DEFER_FROM: u64 = 64 << 20;

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub files: usize,
    pub loaded: u64,
    /// Chunks already loaded by an earlier run.
    pub skipped_chunks: u64,
    /// (file, line or entry, reason)
    pub rejected: Vec<(String, usize, String)>,
    /// Loaded, but a reference still points at nothing once every file is in:
    /// (file, line, what) — recorded as `reference` findings for the source's scorecard.
    pub unresolved: Vec<(String, usize, String)>,
    /// Resources whose references were checked again after the load (they pointed into a
    /// file not loaded yet, or at nothing).
    pub rechecked: u64,
}

/// Progress callback: bytes read so far, resources loaded so far.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// The files an import covers: the paths themselves, and `.ndjson`/`.json` files found
/// under directories, in name order.
pub fn collect_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for e in entries {
                if e.is_dir() {
                    out.extend(collect_files(&[e])?);
                } else if matches!(
                    e.extension().and_then(|x| x.to_str()),
                    Some("ndjson" | "json")
                ) {
                    out.push(e);
                }
            }
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} does not exist", p.display()),
            ));
        }
    }
    Ok(out)
}

fn file_key(p: &Path) -> std::io::Result<String> {
    let abs = std::fs::canonicalize(p)?;
    let len = std::fs::metadata(p)?.len();
    Ok(format!("{}#{len}", abs.display()))
}

fn done_chunks(engine: &Engine, key: &str) -> Result<HashSet<i64>, ApiError> {
    Ok(engine
        .store
        .query_admin(
            "SELECT chunk FROM import_done WHERE file = ?",
            &[Val::Text(key.into())],
        )?
        .into_iter()
        .map(|r| r[0].int())
        .collect())
}

/// Who bulk loads are recorded as: the platform's operator at the command line.
pub const IMPORTER: &str = "hutong import";

/// The audit entry of one chunk of an import.
fn chunk_entry(name: &str, chunk: i64, source: &str) -> hutong_audit::Entry {
    hutong_audit::Entry {
        action: "import".into(),
        outcome: 200,
        who: crate::guard::who(&hutong_access::Principal::platform(IMPORTER)),
        purpose: Some("HSYSADMIN".into()),
        request: format!("import {name} chunk {chunk} as {source}"),
        ..Default::default()
    }
}

/// Imports files (see the module docs), deferring the value indexes when that pays.
pub fn import(
    engine: &Engine,
    files: &[PathBuf],
    source: &str,
    progress: Progress,
) -> std::io::Result<ImportReport> {
    import_with(engine, files, source, Indexes::Auto, progress)
}

/// [`import`], choosing what happens to the value indexes meanwhile.
pub fn import_with(
    engine: &Engine,
    files: &[PathBuf],
    source: &str,
    indexes: Indexes,
    progress: Progress,
) -> std::io::Result<ImportReport> {
    let store_err = |e: hutong_store::StoreError| std::io::Error::other(e.to_string());
    let defer = match indexes {
        Indexes::Defer => true,
        Indexes::Keep => false,
        Indexes::Auto => {
            let input: u64 = files
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum();
            input >= DEFER_FROM && input >= engine.store.size_bytes().map_err(store_err)?
        }
    };
    let deferred = defer && engine.store.defer_value_indexes().map_err(store_err)?;
    if deferred {
        tracing::info!("Value indexes dropped for the load; they are built again at its end.");
    }
    let r = load_files(engine, files, source, progress);
    if deferred {
        let t0 = std::time::Instant::now();
        engine.store.build_value_indexes().map_err(store_err)?;
        tracing::info!(secs = t0.elapsed().as_secs_f64(), "Value indexes built.");
    }
    r
}

fn load_files(
    engine: &Engine,
    files: &[PathBuf],
    source: &str,
    progress: Progress,
) -> std::io::Result<ImportReport> {
    let mut report = ImportReport::default();
    let mut bytes_done = 0u64;
    let mut pending: Vec<Pending> = Vec::new();
    for f in files {
        report.files += 1;
        let key = file_key(f)?;
        let done_in = |key: &str| {
            done_chunks(engine, key).map_err(|e| std::io::Error::other(e.message().to_string()))
        };
        let mut done = done_in(&key)?;
        let name = f.display().to_string();
        let is_ndjson = f.extension().and_then(|x| x.to_str()) == Some("ndjson");
        if is_ndjson {
            // Chunks of [`CHUNK`] lines are recorded under a key naming that size; a load
            // begun in chunks of [`LEGACY_CHUNK`] lines (recorded under the bare key) goes on
            // in those.
            let (key, chunk) = if done.is_empty() {
                let key = format!("{key}/{CHUNK}");
                done = done_in(&key)?;
                (key, CHUNK)
            } else {
                (key, LEGACY_CHUNK)
            };
            bytes_done = import_ndjson(
                engine,
                f,
                &name,
                &key,
                chunk,
                &done,
                source,
                bytes_done,
                &mut report,
                &mut pending,
                progress,
            )?;
        } else {
            let bytes = std::fs::read(f)?;
            bytes_done += bytes.len() as u64;
            if done.contains(&0) {
                report.skipped_chunks += 1;
            } else {
                load_json_file(
                    engine,
                    &name,
                    &key,
                    &bytes,
                    source,
                    &mut report,
                    &mut pending,
                );
            }
        }
        progress(bytes_done, report.loaded);
    }
    deferred_references(engine, source, &pending, &mut report)
        .map_err(|e| std::io::Error::other(e.message().to_string()))?;
    Ok(report)
}

/// A loaded resource whose references did not all resolve when its chunk was loaded.
struct Pending {
    file: String,
    line: usize,
    rtype: String,
    id: String,
}

/// What the platform holds, for the deferred reference check.
struct Held(HashSet<(String, String)>);

impl hutong_quality::Context for Held {
    fn exists(&self, rtype: &str, id: &str) -> bool {
        self.0.contains(&(rtype.to_string(), id.to_string()))
    }
    fn encounter_subject(&self, _id: &str) -> Option<String> {
        None
    }
    fn same_content(&self, _rtype: &str, _fp: &str) -> Option<String> {
        None
    }
}

/// The reference rule, deferred to the end of a bulk load (its files come in any order):
/// what still points at nothing is recorded as a finding against the source and reported.
fn deferred_references(
    engine: &Engine,
    source: &str,
    pending: &[Pending],
    report: &mut ImportReport,
) -> Result<(), ApiError> {
    if pending.is_empty() || engine.checker.rules.severity("reference").is_none() {
        return Ok(());
    }
    report.rechecked = pending.len() as u64;
    let mut only = (*engine.checker).clone();
    for r in hutong_quality::RULES {
        if *r != "reference" {
            only.rules.disable(r);
        }
    }
    for batch in pending.chunks(1_000) {
        let mut stored = Vec::with_capacity(batch.len());
        let mut wanted: std::collections::HashMap<String, Vec<String>> = Default::default();
        for p in batch {
            if let Some(s) = engine
                .store
                .read(&p.rtype, &p.id, &hutong_store::Scope::All)?
                .found()
                .filter(|s| !s.deleted)
            {
                let v = s.json()?;
                for (t, id) in hutong_quality::references(&v) {
                    wanted.entry(t).or_default().push(id);
                }
                stored.push((p, s, v));
            }
        }
        let mut held = HashSet::new();
        for (t, mut ids) in wanted {
            ids.sort();
            ids.dedup();
            for id in engine.store.existing(&t, &ids)? {
                held.insert((t.clone(), id));
            }
        }
        let held = Held(held);
        let mut found = Vec::new();
        for (p, s, v) in stored {
            let f = only.check_context(&v, &held);
            if !f.is_empty() {
                for x in &f {
                    report.unresolved.push((
                        p.file.clone(),
                        p.line,
                        format!("{}/{}: {}", p.rtype, p.id, x.en),
                    ));
                }
                found.push((s, f));
            }
        }
        if found.is_empty() {
            continue;
        }
        let audit = chunk_entry("deferred reference check", 0, source);
        engine.store.write(&audit.hook(), |tx| {
            for (s, f) in &found {
                crate::governance::intake::record_findings(tx, source, s, f)?;
            }
            Ok::<_, ApiError>(())
        })?;
    }
    Ok(())
}

/// What the intake rules concluded of a resource they passed, carried with it to the commit:
/// their warnings and its content fingerprint to record, and whether its references are to
/// be checked again after the load.
struct Verdict {
    findings: Vec<hutong_quality::Finding>,
    fingerprint: String,
    /// Its `Type/id` when a reference did not resolve yet (checked again after the load).
    unresolved: Option<(String, String)>,
    /// Its `Type/id` when a reference resolved only into a chunk still in flight (checked
    /// again after the load should an earlier chunk fail to commit).
    provisional: Option<(String, String)>,
    line: usize,
}

/// A resource the intake rules passed.
struct Passed {
    rtype: String,
    id: Option<String>,
    resource: Value,
    verdict: Verdict,
}

/// A passed resource made ready to write: stamped, indexed and compressed.
struct Item {
    prepared: hutong_store::Prepared,
    fresh: bool,
    verdict: Verdict,
}

/// A chunk on its way through the pipeline: `T` is [`Passed`] after the intake rules,
/// [`Item`] once prepared. `rejected` holds the lines turned away, `bytes` the input covered.
struct Chunk<T> {
    no: i64,
    items: Vec<T>,
    rejected: Vec<(usize, String)>,
    bytes: u64,
    /// Whether preparing dropped a resource the intake rules had passed: later chunks may
    /// have counted on it being in flight.
    dropped: bool,
}

impl<T> Chunk<T> {
    fn new(no: i64, bytes: u64) -> Chunk<T> {
        Chunk {
            no,
            items: Vec::new(),
            rejected: Vec::new(),
            bytes,
            dropped: false,
        }
    }
}

/// The ids the intake rules passed in the chunks that may not be committed yet: those in the
/// channels, the one being prepared and the one being committed. A patient's record often
/// spans two chunks; without these, every reference into the previous chunk would look
/// dangling and wait for the deferred check, which re-reads the resource after the load.
#[derive(Default)]
struct InFlight(std::collections::VecDeque<HashSet<(String, String)>>);

/// Chunks each channel of the pipeline holds: enough to keep the other stages busy while
/// the writer waits on the disk.
const QUEUED: usize = 2;

/// Chunks in flight once the intake rules have passed them: those in the channels, one being
/// prepared and one being committed.
const IN_FLIGHT: usize = 2 * QUEUED + 2;

impl InFlight {
    fn holds(&self, key: &(String, String)) -> bool {
        self.0.iter().any(|ids| ids.contains(key))
    }

    fn push(&mut self, ids: HashSet<(String, String)>) {
        if self.0.len() == IN_FLIGHT {
            self.0.pop_front();
        }
        self.0.push_back(ids);
    }
}

/// Loads one NDJSON file as a three-stage pipeline: a reader thread parses chunk N+2 and
/// passes it through the intake rules, a second thread stamps, indexes and compresses chunk
/// N+1, and this thread commits chunk N. Three threads rather than two so that the operating
/// system spreads the work over the cores whichever stage happens to be the heaviest.
#[allow(clippy::too_many_arguments)]
fn import_ndjson(
    engine: &Engine,
    f: &Path,
    name: &str,
    key: &str,
    chunk_lines: usize,
    done: &HashSet<i64>,
    source: &str,
    mut bytes_done: u64,
    report: &mut ImportReport,
    pending: &mut Vec<Pending>,
    progress: Progress,
) -> std::io::Result<u64> {
    type Sent<T> = std::io::Result<Chunk<T>>;
    let file = std::fs::File::open(f)?;
    std::thread::scope(|scope| {
        let (checked_tx, checked_rx) = std::sync::mpsc::sync_channel::<Sent<Passed>>(QUEUED);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Sent<Item>>(QUEUED);
        // What a stage is done with goes back to the thread that allocated it, to be freed
        // there: freeing another thread's memory costs the allocator several times more,
        // and was a tenth of the later stages' time.
        let (spent_values, values_back) = std::sync::mpsc::channel::<Vec<Value>>();
        let (spent_items, items_back) = std::sync::mpsc::channel::<Vec<Item>>();
        let reader = std::thread::Builder::new().name("check".into());
        let _reader = reader.spawn_scoped(scope, move || {
            let reader = BufReader::new(file);
            let mut lines: Vec<(usize, String)> = Vec::with_capacity(chunk_lines);
            let mut no = 0i64;
            let mut bytes = 0u64;
            let mut in_flight = InFlight::default();
            let mut send = |no: i64, lines: &mut Vec<(usize, String)>, bytes: u64| -> bool {
                values_back.try_iter().for_each(drop);
                let chunk = if done.contains(&no) {
                    Chunk::new(no, bytes)
                } else {
                    check_chunk(engine, no, lines, source, bytes, &mut in_flight)
                };
                lines.clear();
                checked_tx.send(Ok(chunk)).is_ok()
            };
            for (i, line) in reader.lines().enumerate() {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = checked_tx.send(Err(e));
                        return;
                    }
                };
                bytes += line.len() as u64 + 1;
                if !line.trim().is_empty() {
                    lines.push((i + 1, line));
                }
                if lines.len() == chunk_lines {
                    if !send(no, &mut lines, bytes) {
                        return;
                    }
                    no += 1;
                    bytes = 0;
                }
            }
            if !lines.is_empty() || bytes > 0 {
                send(no, &mut lines, bytes);
            }
        });
        let preparer = std::thread::Builder::new().name("prepare".into());
        let _preparer = preparer.spawn_scoped(scope, move || {
            for chunk in checked_rx {
                items_back.try_iter().for_each(drop);
                let ready = chunk.map(|c| {
                    let (ready, values) = prepare_chunk(engine, c);
                    let _ = spent_values.send(values);
                    ready
                });
                if ready_tx.send(ready).is_err() {
                    return;
                }
            }
        });
        let mut failed = false;
        for chunk in ready_rx {
            let chunk = chunk?;
            bytes_done += chunk.bytes;
            if done.contains(&chunk.no) {
                report.skipped_chunks += 1;
                continue;
            }
            failed |= chunk.dropped;
            let (committed, items) =
                commit_chunk(engine, name, key, source, chunk, report, pending, failed);
            failed |= !committed;
            let _ = spent_items.send(items);
            progress(bytes_done, report.loaded);
        }
        Ok(bytes_done)
    })
}

/// Commits a prepared chunk in one transaction (its warnings recorded with it, the chunk
/// marked done), and remembers what still has to resolve its references — including, after
/// an earlier chunk `failed`, what resolved only into chunks in flight. Whether it committed,
/// and the chunk's items, spent.
#[allow(clippy::too_many_arguments)]
fn commit_chunk(
    engine: &Engine,
    name: &str,
    key: &str,
    source: &str,
    chunk: Chunk<Item>,
    report: &mut ImportReport,
    pending: &mut Vec<Pending>,
    failed: bool,
) -> (bool, Vec<Item>) {
    for (line, why) in chunk.rejected {
        report.rejected.push((name.to_string(), line, why));
    }
    let n = chunk.items.len() as u64;
    let audit = chunk_entry(name, chunk.no, source);
    // The platform's own load: the interactions' checks run as for any writer.
    let g = Guard::platform(engine, IMPORTER, "import");
    let r = engine.store.write(&audit.hook(), |tx| {
        for it in &chunk.items {
            let sub = Submission {
                findings: &it.verdict.findings,
                fingerprint: &it.verdict.fingerprint,
            };
            engine.write_prepared_in(tx, &g, source, &it.prepared, it.fresh, None, &sub)?;
        }
        tx.mark_done(key, chunk.no)?;
        Ok::<_, ApiError>(())
    });
    match r {
        Ok(()) => {
            report.loaded += n;
            for Item { verdict: it, .. } in &chunk.items {
                let recheck = it
                    .unresolved
                    .as_ref()
                    .or(it.provisional.as_ref().filter(|_| failed));
                if let Some((rtype, id)) = recheck {
                    pending.push(Pending {
                        file: name.to_string(),
                        line: it.line,
                        rtype: rtype.clone(),
                        id: id.clone(),
                    });
                }
            }
        }
        Err(e) => {
            report.rejected.push((
                name.to_string(),
                0,
                format!("chunk {} not loaded: {}", chunk.no, e.message()),
            ));
            return (false, chunk.items);
        }
    }
    (true, chunk.items)
}

/// Parses a chunk's lines and passes them through the intake rules; `in_flight` learns the
/// ids it passed.
fn check_chunk(
    engine: &Engine,
    no: i64,
    lines: &[(usize, String)],
    source: &str,
    bytes: u64,
    in_flight: &mut InFlight,
) -> Chunk<Passed> {
    let now = now_ms();
    let mut chunk = Chunk::new(no, bytes);
    chunk.items.reserve(lines.len());
    let mut parsed: Vec<(usize, String, Value)> = Vec::with_capacity(lines.len());
    for (n, line) in lines {
        match parse_line(engine, line, source, now) {
            Ok((t, v)) => parsed.push((*n, t, v)),
            Err(e) => chunk.rejected.push((*n, e.message().to_string())),
        }
    }
    // The intake rules over the chunk. A reference that does not resolve yet is no rejection:
    // a bulk load's files come in any order, so it may point into a file not loaded yet; it
    // is checked again once every file is in.
    let resources: Vec<&Value> = parsed.iter().map(|(_, _, v)| v).collect();
    let local: HashSet<(String, String)> = resources
        .iter()
        .filter_map(|v| {
            Some((
                v.at("resourceType").as_str()?.to_string(),
                v.at("id").as_str()?.to_string(),
            ))
        })
        .collect();
    let checked = match crate::governance::intake::check_with(
        &engine.store,
        &engine.checker,
        &hutong_store::Scope::All,
        source,
        &resources,
        local,
        &|key| in_flight.holds(key),
        true,
    ) {
        Ok(c) => c,
        Err(e) => {
            for (n, _, _) in &parsed {
                chunk.rejected.push((*n, e.message().to_string()));
            }
            in_flight.push(HashSet::new());
            return chunk;
        }
    };
    // What this chunk will hold once committed: its resources that pass, by the ids they came with.
    let mut ids = HashSet::new();
    for ((((n, t, v), mut findings), fingerprint), provisional) in parsed
        .into_iter()
        .zip(checked.findings)
        .zip(checked.fingerprints)
        .zip(checked.provisional)
    {
        let dangling = findings.iter().any(|f| f.rule == "reference");
        findings.retain(|f| f.rule != "reference");
        if hutong_quality::rejects(&findings) {
            let located: Vec<(Option<String>, &hutong_quality::Finding)> =
                findings.iter().map(|f| (None, f)).collect();
            let body = serde_json::to_vec(&v).unwrap_or_default();
            let path = match v.at("id").as_str() {
                Some(id) => format!("{t}/{id}"),
                None => t.clone(),
            };
            let method = if path.contains('/') { "PUT" } else { "POST" };
            let e = crate::governance::intake::rejected(
                &engine.store,
                source,
                method,
                &path,
                &body,
                &located,
            );
            let why: Vec<String> = findings
                .iter()
                .filter(|f| f.severity == hutong_quality::Severity::Error)
                .map(|f| format!("[{}] {} ({})", f.rule, f.en, f.expression))
                .collect();
            let qid = e
                .outcome
                .issues
                .last()
                .map(|i| i.diagnostics.clone())
                .unwrap_or_default();
            chunk
                .rejected
                .push((n, format!("{} — {}", why.join("; "), qid)));
            continue;
        }
        let id = v.at("id").as_str().map(String::from);
        let unresolved = match (&id, dangling) {
            (Some(id), true) => Some((t.clone(), id.clone())),
            _ => None,
        };
        let provisional = match (&id, provisional && !dangling) {
            (Some(id), true) => Some((t.clone(), id.clone())),
            _ => None,
        };
        if let Some(id) = &id {
            ids.insert((t.clone(), id.clone()));
        }
        chunk.items.push(Passed {
            rtype: t,
            id,
            resource: v,
            verdict: Verdict {
                findings,
                fingerprint,
                unresolved,
                provisional,
                line: n,
            },
        });
    }
    in_flight.push(ids);
    chunk
}

/// Stamps, indexes and compresses the resources of a checked chunk; returns it ready, and
/// the resources it was made from.
fn prepare_chunk(engine: &Engine, checked: Chunk<Passed>) -> (Chunk<Item>, Vec<Value>) {
    let mut chunk = Chunk::new(checked.no, checked.bytes);
    chunk.rejected = checked.rejected;
    chunk.items.reserve(checked.items.len());
    let mut spent = Vec::with_capacity(checked.items.len());
    for mut p in checked.items {
        let fresh = p.id.is_none();
        let prepared = engine
            .store
            .prepare(&p.rtype, p.id.as_deref(), &mut p.resource);
        spent.push(p.resource);
        match prepared {
            Ok(prepared) => chunk.items.push(Item {
                prepared,
                fresh,
                verdict: p.verdict,
            }),
            Err(e) => {
                chunk.dropped = true;
                chunk
                    .rejected
                    .push((p.verdict.line, ApiError::from(e).message().to_string()));
            }
        }
    }
    (chunk, spent)
}

/// A line's resource, parsed, of a known type, its content classified and stamped.
fn parse_line(
    engine: &Engine,
    line: &str,
    source: &str,
    now: i64,
) -> Result<(String, Value), ApiError> {
    let mut v = crate::wire::parse_json_str(line)?;
    let t = v.at("resourceType").as_str().unwrap_or("").to_string();
    if !Definitions::get().is_resource_type(&t) {
        return Err(ApiError::bad_request(format!("Unknown resourceType '{t}'")));
    }
    check_resource(&v, &t, None)?;
    // Refused line by line here, not by the write path for the whole chunk.
    if t == "Task" && crate::governance::orders::is_work_order(&v) {
        return Err(crate::error::forbidden(
            crate::governance::orders::NOT_WRITTEN,
        ));
    }
    engine.intake(&mut v, source, now);
    Ok((t, v))
}

fn load_json_file(
    engine: &Engine,
    name: &str,
    key: &str,
    bytes: &[u8],
    source: &str,
    report: &mut ImportReport,
    pending: &mut Vec<Pending>,
) {
    let v = match crate::wire::parse_json(bytes) {
        Ok(v) => v,
        Err(e) => {
            return report
                .rejected
                .push((name.to_string(), 0, e.message().to_string()))
        }
    };
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    if v.get("resourceType").and_then(Value::as_str) == Some("Bundle")
        && matches!(kind, "transaction" | "batch")
    {
        let n = v.get("entry").and_then(Value::as_array).map_or(0, Vec::len) as u64;
        let req = Req {
            method: "POST".into(),
            body: bytes.to_vec(),
            base: String::new(),
            source: source.to_string(),
            import_key: Some((key.to_string(), 0)),
            principal: std::sync::Arc::new(hutong_access::Principal::platform(IMPORTER)),
            ..Default::default()
        };
        let g = Guard::new(
            engine,
            req.principal.clone(),
            None,
            None,
            format!("import {name} as {source}"),
        );
        g.act("import");
        let processed = crate::engine::bundle::process(engine, &req, &g);
        g.finish(
            engine,
            processed.as_ref().map_or_else(|e| e.status, |r| r.status),
            None,
        );
        match processed {
            Ok(_) if kind == "transaction" => report.loaded += n,
            Ok(resp) => {
                // A batch: count the entries that succeeded, and mark the file done.
                if let Body::Raw(b) = resp.body {
                    let out: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                    for (i, e) in out["entry"].as_array().into_iter().flatten().enumerate() {
                        let st = e["response"]["status"].as_str().unwrap_or("");
                        if st.starts_with('2') {
                            report.loaded += 1;
                        } else {
                            let why = e["response"]["outcome"]["issue"][0]["diagnostics"]
                                .as_str()
                                .unwrap_or(st);
                            report.rejected.push((name.to_string(), i, why.to_string()));
                        }
                    }
                }
                let _ = engine
                    .store
                    .write(&chunk_entry(name, 0, source).hook(), |tx| {
                        tx.mark_done(key, 0)
                    });
            }
            Err(e) => report
                .rejected
                .push((name.to_string(), 0, e.message().to_string())),
        }
        return;
    }
    // A collection or searchset bundle, or a single resource: its resources go through the
    // same intake rules as an NDJSON chunk (entry numbers stand for lines).
    let items: Vec<Value> = if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        v["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("resource").cloned())
            .collect()
    } else {
        vec![v]
    };
    let lines: Vec<(usize, String)> = items
        .iter()
        .enumerate()
        .map(|(i, item)| (i, item.to_string()))
        .collect();
    let checked = check_chunk(
        engine,
        0,
        &lines,
        source,
        bytes.len() as u64,
        &mut InFlight::default(),
    );
    let (chunk, _) = prepare_chunk(engine, checked);
    commit_chunk(engine, name, key, source, chunk, report, pending, false);
}

/// Writes every current resource (of `types`, or all) as `Type.ndjson` files under `out`.
/// Returns (type, count) per file written.
pub fn export(
    engine: &Engine,
    out: &Path,
    types: &[String],
    since: Option<i64>,
) -> std::io::Result<Vec<(String, u64)>> {
    std::fs::create_dir_all(out)?;
    let all = Definitions::get().resource_types().to_vec();
    let types = if types.is_empty() { &all } else { types };
    let mut written = Vec::new();
    let g = Guard::platform(engine, "hutong export", "export");
    g.note(format!("to {}", out.display()));
    for t in types {
        let mut after = 0;
        let mut count = 0;
        let mut file: Option<std::io::BufWriter<std::fs::File>> = None;
        loop {
            let (batch, last) = engine
                .store
                .scan(t, since, false, after, 1000, &g.scope)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if batch.is_empty() {
                break;
            }
            let f = match &mut file {
                Some(f) => f,
                None => file.insert(std::io::BufWriter::new(std::fs::File::create(
                    out.join(format!("{t}.ndjson")),
                )?)),
            };
            for s in &batch {
                f.write_all(&g.release(s))?;
                f.write_all(b"\n")?;
                count += 1;
            }
            after = last;
        }
        if let Some(mut f) = file {
            f.flush()?;
            written.push((t.clone(), count));
        }
    }
    g.finish(engine, 200, None);
    Ok(written)
}

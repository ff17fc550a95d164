//! Intake governance on every write path: the rules of `hutong-quality` run on each
//! submitted resource; errors reject the submission (the whole transaction) with an
//! OperationOutcome naming rule, location, Chinese and English message and fix, and the
//! submission is kept in a quarantine its source can list, download and resubmit; warnings
//! are recorded beside the accepted version, in the same transaction.
//!
//! One file past the ~800 lines we keep to, because the rules' run, the fingerprint index and
//! the quarantine are one bookkeeping, written in the same transaction as the version they
//! judge; its tests exercise them together.

use std::collections::{HashMap, HashSet};

use hutong_fhir::date::now_ms;
use hutong_fhir::json::Fields;
use hutong_fhir::outcome::Issue;
use hutong_fhir::{IssueCode, Outcome};
use hutong_quality::{Checker, Context, Dose, Finding, Severity};
use hutong_store::schema::insert_ignore;
use hutong_store::sql::{Dialect, Val};
use hutong_store::{Scope, Store, StoreError, Stored, Tx};
use serde_json::{json, Value};

use crate::error::ApiError;

/// The tables, written once for both dialects ([`hutong_store::sql::Dialect::ddl`]).
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS qc_finding (src TEXT NOT NULL, at BIGINT NOT NULL,
    rtype TEXT NOT NULL, id TEXT NOT NULL, version BIGINT NOT NULL, rule TEXT NOT NULL,
    severity TEXT NOT NULL, expression TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS qc_finding_src ON qc_finding (src, at);
CREATE TABLE IF NOT EXISTS qc_seen (k BIGINT NOT NULL PRIMARY KEY, rid BIGINT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS qc_quarantine (src TEXT NOT NULL, qid TEXT NOT NULL,
    at BIGINT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL, body BYTEA NOT NULL,
    outcome TEXT NOT NULL, rules TEXT NOT NULL, status TEXT NOT NULL,
    resolved_at BIGINT NOT NULL DEFAULT 0, resolution TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (src, qid));
CREATE INDEX IF NOT EXISTS qc_quarantine_at ON qc_quarantine (src, status, at);
";

/// Creates the governance tables (idempotent), and moves the content fingerprints of a
/// store made before they were kept as one 64-bit key per row (`qc_fp`, hex text; then
/// `qc_content`, source, type and id as text) into `qc_seen`.
pub fn open(store: &Store) -> Result<(), StoreError> {
    store.create_tables(TABLES)?;
    for (table, fp_is_hex) in [("qc_fp", true), ("qc_content", false)] {
        let exists = store.dialect().table_exists_sql(table);
        if store.query_admin(&exists, &[])?[0][0].int() == 0 {
            continue;
        }
        let rows = store.query_admin(&format!("SELECT src, rtype, fp, id FROM {table}"), &[])?;
        let insert = seen_insert(store.dialect());
        let mut moved = 0usize;
        store.with_admin_tx(|conn| {
            for r in &rows {
                let fp = if fp_is_hex {
                    fingerprint_key(r[2].text())
                } else {
                    Some(r[2].int())
                };
                if let Some(fp) = fp {
                    let (src, rtype, id) = (r[0].text(), r[1].text(), r[3].text());
                    conn.exec(&insert, &seen_params(src, rtype, fp, id))?;
                    moved += 1;
                }
            }
            conn.batch(&format!("DROP TABLE {table}"))
        })?;
        tracing::info!(
            moved,
            from = table,
            "Moved content fingerprints to qc_seen."
        );
    }
    bucket_seen(store)
}

/// Gives the keys of a store made before [`seen_key`] had buckets theirs (from the routes of
/// the resources they name), once; a key keeps its low 48 bits.
fn bucket_seen(store: &Store) -> Result<(), StoreError> {
    let done = "SELECT v FROM meta WHERE k = 'qc_seen_buckets'";
    if !store.query_admin(done, &[])?.is_empty() {
        return Ok(());
    }
    let d = store.dialect();
    let table = d.ddl(
        "CREATE TABLE qc_seen_b (k BIGINT NOT NULL PRIMARY KEY, rid BIGINT NOT NULL) WITHOUT ROWID",
    );
    let copy = insert_ignore(
        d,
        &format!(
            "qc_seen_b (k, rid) SELECT {} | (q.k & {}), q.rid FROM qc_seen q \
             JOIN res_route r ON r.rid = q.rid",
            bucket_sql("r"),
            (1i64 << SEEN_HASH_BITS) - 1
        ),
    );
    let mark = insert_ignore(d, "meta (k, v) VALUES ('qc_seen_buckets', 'done')");
    store.with_admin_tx(|conn| {
        conn.batch(&table)?;
        conn.exec(&copy, &[])?;
        conn.batch("DROP TABLE qc_seen")?;
        conn.batch("ALTER TABLE qc_seen_b RENAME TO qc_seen")?;
        conn.exec(&mark, &[])?;
        Ok(())
    })
}

/// The statement that records the content fingerprint of a resource named by type and id
/// (moving the fingerprints of an older store): one row of two integers, keyed by
/// [`seen_key`] (its bucket taken from the resource's route), naming the resource by its
/// storage id. A version just written is recorded by [`seen_put`], its key at hand.
fn seen_insert(d: Dialect) -> String {
    d.insert_ignore(&format!(
        "qc_seen (k, rid) SELECT {} | ?, r.rid FROM res_route r WHERE r.rtype = \
         (SELECT cid FROM catalog WHERE kind = ? AND name = ?) AND r.id = ?",
        bucket_sql("r")
    ))
}

/// Records the fingerprint key of a version just written: the row [`seen_insert`] makes,
/// from the version's own shard and rid. It runs for every accepted resource.
fn seen_put(d: Dialect) -> String {
    d.insert_ignore("qc_seen (k, rid) VALUES (?, ?)")
}

fn seen_params(source: &str, rtype: &str, fp: i64, id: &str) -> [Val; 4] {
    [
        Val::Int(seen_hash(source, rtype, fp)),
        Val::Int(hutong_store::schema::KIND_TYPE),
        Val::Text(rtype.into()),
        Val::Text(id.into()),
    ]
}

/// Bits of a [`seen_key`] below its bucket.
const SEEN_HASH_BITS: u32 = 48;

/// The key of a fingerprint as seen from one source for one type: the first submission of
/// the same content by the same source is what a later one duplicates. Its top 16 bits are
/// a bucket — the low bits of the shard of the patient the content is filed under (0 for
/// Patients, whose own id is their shard and is not part of their content) — so that a
/// patient's records, written together, land on a few neighbouring pages of `qc_seen`
/// instead of one random page each (a quarter of the pages an import chunk dirtied). Below
/// it, 48 bits of a hash of source, type and fingerprint: a collision among one bucket's
/// resources (2⁻⁴⁸ per pair) would only mark a resource as a possible duplicate, a warning.
fn seen_key(source: &str, rtype: &str, fp: i64, shard: i64) -> i64 {
    let bucket = if rtype == "Patient" {
        0
    } else {
        shard as u64 & 0xffff
    };
    ((bucket << SEEN_HASH_BITS) as i64) | seen_hash(source, rtype, fp)
}

fn seen_hash(source: &str, rtype: &str, fp: i64) -> i64 {
    let h = hutong_mpi::block::key_hash(&format!("{source}\u{0}{rtype}\u{0}{fp:016x}"));
    (h as u64 & ((1 << SEEN_HASH_BITS) - 1)) as i64
}

/// [`seen_key`]'s bucket in SQL, from the route `r` of the resource.
fn bucket_sql(r: &str) -> String {
    format!(
        "((CASE WHEN {r}.rtype = (SELECT cid FROM catalog WHERE kind = {} AND name = 'Patient') \
         THEN 0 ELSE {r}.shard & 65535 END) << {SEEN_HASH_BITS})",
        hutong_store::schema::KIND_TYPE
    )
}

/// The shard of the patient `v`'s content files it under, as the store will compute it.
fn content_shard(rtype: &str, v: &Value) -> i64 {
    hutong_fhir::index::content_owner(rtype, v).map_or(0, |p| hutong_store::shard_of(&p))
}

/// The 64-bit key a content fingerprint (hex) is kept and looked up by: its first 16 hex
/// digits. Collisions among one source's resources of one type are negligible (2⁻⁶⁴ per
/// pair) and would only mark a resource as a possible duplicate, which is a warning.
pub fn fingerprint_key(fp: &str) -> Option<i64> {
    fp.get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .map(|k| k as i64)
}

/// The verdict on one submission: per resource, its findings and content fingerprint.
#[derive(Debug, Default)]
pub struct Checked {
    pub findings: Vec<Vec<Finding>>,
    pub fingerprints: Vec<String>,
    /// Per resource: whether a reference of it resolved only to a provisional resource (see
    /// [`check_with`]).
    pub provisional: Vec<bool>,
}

/// What the platform holds, fetched in a few queries for a whole submission.
struct Held<'a> {
    store: &'a Store,
    /// The submitter's view: what the findings' messages may cite.
    scope: &'a Scope,
    /// What the rules read that the submitter may not (`Type/id`), filled as it is read.
    hidden: std::cell::RefCell<HashSet<(String, String)>>,
    /// Whether the submitter may read what its own source submitted (residents and
    /// operators submit under the platform's default source, whose records they may not).
    source_visible: bool,
    local: HashSet<(String, String)>,
    existing: HashSet<(String, String)>,
    encounters: HashMap<String, Option<String>>,
    content: HashMap<(String, String), String>,
    misfiled: HashMap<String, String>,
    /// Patient id → birth date: the submission's own, then the platform's (read once).
    births: std::cell::RefCell<HashMap<String, Option<String>>>,
    /// The submission's own vaccine doses per patient, and the platform's (read once).
    batch_doses: HashMap<String, Vec<Dose>>,
    doses: std::cell::RefCell<HashMap<String, Vec<Dose>>>,
}

impl Held<'_> {
    /// Remembers a stored resource a rule read as hidden when the submitter may not read it.
    fn note_visibility(&self, s: &Stored) {
        if !self.scope.permits_stored(s) {
            self.hidden
                .borrow_mut()
                .insert((s.rtype.clone(), s.id.clone()));
        }
    }
}

impl Context for Held<'_> {
    fn encounter_misfiled(&self, id: &str) -> Option<String> {
        self.misfiled.get(id).cloned()
    }
    fn exists(&self, rtype: &str, id: &str) -> bool {
        let k = (rtype.to_string(), id.to_string());
        self.local.contains(&k) || self.existing.contains(&k)
    }
    fn encounter_subject(&self, id: &str) -> Option<String> {
        if let Some(s) = self.encounters.get(id) {
            return s.clone();
        }
        match self.store.read("Encounter", id, &Scope::All) {
            Ok(hutong_store::Lookup::Found(s)) if !s.deleted => {
                self.note_visibility(&s);
                s.json()
                    .ok()
                    .and_then(|v| v.at("subject").at("reference").as_str().map(String::from))
            }
            _ => None,
        }
    }
    fn hidden(&self, rtype: &str, id: &str) -> bool {
        if !self.source_visible && self.content.values().any(|other| other == id) {
            return true;
        }
        self.hidden
            .borrow()
            .contains(&(rtype.to_string(), id.to_string()))
    }
    fn patient_birth(&self, id: &str) -> Option<String> {
        if let Some(b) = self.births.borrow().get(id) {
            return b.clone();
        }
        let b = match self.store.read("Patient", id, &Scope::All) {
            Ok(hutong_store::Lookup::Found(s)) if !s.deleted => {
                self.note_visibility(&s);
                s.json().ok().and_then(|v| hutong_quality::birth_of(&v))
            }
            _ => None,
        };
        self.births.borrow_mut().insert(id.to_string(), b.clone());
        b
    }
    fn doses(&self, patient: &str) -> Vec<Dose> {
        if let Some(d) = self.doses.borrow().get(patient) {
            return d.clone();
        }
        let mut out = self.batch_doses.get(patient).cloned().unwrap_or_default();
        let q = hutong_store::Query::parse(
            "Immunization",
            &[
                ("patient".into(), format!("Patient/{patient}")),
                ("_count".into(), "1000".into()),
            ],
            true,
        );
        let page = q.ok().and_then(|q| self.store.search(&q, &Scope::All).ok());
        if let Some(page) = page {
            for s in page.matches {
                self.note_visibility(&s);
                if let Some(d) = s.json().ok().as_ref().and_then(Dose::of) {
                    if !out.iter().any(|o| o.id == d.id) {
                        out.push(d);
                    }
                }
            }
        }
        self.doses
            .borrow_mut()
            .insert(patient.to_string(), out.clone());
        out
    }
    fn same_content(&self, rtype: &str, fp: &str) -> Option<String> {
        self.content
            .get(&(rtype.to_string(), fp.to_string()))
            .cloned()
    }
}

/// Checks the resources of one submission from `source` together: `local` are the
/// `Type/id`s the submission itself creates (references to them resolve), `context`
/// whether the rules that look at the platform's data run (bulk loads defer references).
pub fn check(
    store: &Store,
    checker: &Checker,
    scope: &Scope,
    source: &str,
    resources: &[&Value],
    local: HashSet<(String, String)>,
    references: bool,
) -> Result<Checked, ApiError> {
    check_with(
        store,
        checker,
        scope,
        source,
        resources,
        local,
        &|_| false,
        references,
    )
}

/// [`check`], with references to what `provisional` holds counted as resolved and reported
/// in [`Checked::provisional`]: a bulk load's chunks still on their way to the database,
/// which the caller checks again should one of them fail to commit.
///
/// `scope` is the submitter's view: the rules decide on everything the platform holds, but
/// a reference resolves only to what the submitter may read (else whether any id exists
/// would show through), and a finding cites only what the submitter may read.
#[allow(clippy::too_many_arguments)]
pub fn check_with(
    store: &Store,
    checker: &Checker,
    scope: &Scope,
    source: &str,
    resources: &[&Value],
    local: HashSet<(String, String)>,
    provisional: &dyn Fn(&(String, String)) -> bool,
    references: bool,
) -> Result<Checked, ApiError> {
    let now = now_ms();
    let mut out = Checked {
        provisional: vec![false; resources.len()],
        ..Checked::default()
    };
    // Everything referenced that the submission does not hold, fetched per type.
    let mut wanted: HashMap<String, Vec<String>> = HashMap::new();
    let mut existing = HashSet::new();
    if references && checker.rules.severity("reference").is_some() {
        for (i, v) in resources.iter().enumerate() {
            for key in hutong_quality::references(v) {
                if local.contains(&key) {
                    continue;
                }
                if provisional(&key) {
                    out.provisional[i] = true;
                    existing.insert(key);
                    continue;
                }
                wanted.entry(key.0).or_default().push(key.1);
            }
        }
    }
    for (t, mut ids) in wanted {
        ids.sort();
        ids.dedup();
        for id in store.existing_visible(&t, &ids, scope)? {
            existing.insert((t.clone(), id));
        }
    }
    let fps: Vec<String> = resources
        .iter()
        .map(|v| hutong_quality::fingerprint(v))
        .collect();
    let mut content = HashMap::new();
    if checker.rules.severity("duplicate").is_some() && !fps.is_empty() {
        let by_key: HashMap<i64, (&str, &String)> = resources
            .iter()
            .zip(&fps)
            .filter_map(|(v, f)| {
                let rtype = v.at("resourceType").as_str()?;
                let shard = content_shard(rtype, v);
                Some((
                    seen_key(source, rtype, fingerprint_key(f)?, shard),
                    (rtype, f),
                ))
            })
            .collect();
        let keys: Vec<i64> = by_key.keys().copied().collect();
        for chunk in keys.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let params: Vec<Val> = chunk.iter().map(|k| Val::Int(*k)).collect();
            for r in store.query_admin(
                &format!(
                    "SELECT q.k, r.id FROM qc_seen q JOIN res_route r ON r.rid = q.rid \
                     WHERE q.k IN ({marks})"
                ),
                &params,
            )? {
                if let Some((rtype, fp)) = by_key.get(&r[0].int()) {
                    content.insert((rtype.to_string(), (*fp).clone()), r[1].text().to_string());
                }
            }
        }
    }
    let encounters = resources
        .iter()
        .filter(|v| v.at("resourceType") == "Encounter")
        .filter_map(|v| {
            Some((
                v.at("id").as_str()?.to_string(),
                v.at("subject").at("reference").as_str().map(String::from),
            ))
        })
        .collect();
    let mut batch_doses: HashMap<String, Vec<Dose>> = HashMap::new();
    for v in resources {
        if let (Some(d), Some(p)) = (
            Dose::of(v),
            v.at("patient")
                .at("reference")
                .as_str()
                .and_then(|r| r.strip_prefix("Patient/")),
        ) {
            batch_doses.entry(p.to_string()).or_default().push(d);
        }
    }
    let source_visible = match scope {
        Scope::All => true,
        Scope::Rows(r) => r.sources.contains(source),
    };
    let mut held = Held {
        store,
        scope,
        hidden: Default::default(),
        source_visible,
        local,
        existing,
        encounters,
        content,
        misfiled: HashMap::new(),
        batch_doses,
        doses: Default::default(),
        births: std::cell::RefCell::new(
            resources
                .iter()
                .filter(|v| v.at("resourceType") == "Patient")
                .filter_map(|v| {
                    Some((
                        v.at("id").as_str()?.to_string(),
                        hutong_quality::birth_of(v),
                    ))
                })
                .collect(),
        ),
    };
    if checker.rules.severity("encounter-subject").is_some() {
        held.misfiled =
            hutong_quality::misfiled_encounters(resources, &|e| held.encounter_subject(e));
    }
    let context = if references {
        checker.clone()
    } else {
        // Bulk loads: references may point into files not loaded yet.
        let mut c = checker.clone();
        c.rules.disable("reference");
        c
    };
    for (v, fp) in resources.iter().zip(&fps) {
        let mut f = checker.check(v, now);
        f.extend(context.check_context_with(v, &held, Some(fp)));
        // A later copy in the same submission is a duplicate of the first.
        let rtype = v.at("resourceType").as_str().unwrap_or("").to_string();
        let id = v.at("id").as_str().unwrap_or("").to_string();
        held.content.entry((rtype, fp.clone())).or_insert(id);
        out.findings.push(f);
        out.fingerprints.push(fp.clone());
    }
    Ok(out)
}

/// The OperationOutcome issue of a finding; `at` prefixes its location inside a bundle
/// (`Bundle.entry[3].resource`).
pub fn issue(f: &Finding, at: Option<&str>) -> Issue {
    let v = f.issue();
    let expression = match at {
        Some(prefix) => match f.expression.split_once('.') {
            Some((_, rest)) => format!("{prefix}.{rest}"),
            None => prefix.to_string(),
        },
        None => f.expression.clone(),
    };
    let code = match v.at("code").as_str() {
        Some("structure") => IssueCode::Structure,
        Some("not-found") => IssueCode::NotFound,
        Some("duplicate") => IssueCode::Duplicate,
        Some("code-invalid") => IssueCode::CodeInvalid,
        Some("required") => IssueCode::Required,
        _ => IssueCode::BusinessRule,
    };
    let mut extra = serde_json::Map::new();
    extra.insert("extension".into(), v.at("extension").clone());
    extra.insert("details".into(), v.at("details").clone());
    Issue {
        severity: f.severity.as_str(),
        code,
        diagnostics: v.at("diagnostics").as_str().unwrap_or("").to_string(),
        expression: Some(expression),
        extra: Some(extra),
    }
}

/// The outcome of a rejected submission: every finding, errors first.
pub fn rejection(findings: &[(Option<String>, &Finding)]) -> Outcome {
    let mut sorted: Vec<&(Option<String>, &Finding)> = findings.iter().collect();
    sorted.sort_by_key(|(_, f)| std::cmp::Reverse(f.severity));
    Outcome {
        issues: sorted
            .into_iter()
            .map(|(at, f)| issue(f, at.as_deref()))
            .collect(),
    }
}

/// Keeps a rejected submission (sealed: it may carry names and ID numbers) with the
/// outcome that rejected it; returns its quarantine id.
pub fn quarantine(
    store: &Store,
    source: &str,
    method: &str,
    path: &str,
    body: &[u8],
    outcome: &Outcome,
    rules: &[&str],
) -> Result<String, StoreError> {
    let qid = format!("q-{}", uuid::Uuid::new_v4().simple());
    let sealed = store.seal(body)?;
    store.exec_admin(
        "INSERT INTO qc_quarantine (src, qid, at, method, path, body, outcome, rules, status) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open')",
        &[
            Val::Text(source.into()),
            Val::Text(qid.clone()),
            Val::Int(now_ms()),
            Val::Text(method.into()),
            Val::Text(path.into()),
            Val::Blob(sealed),
            Val::Text(outcome.to_json().to_string()),
            Val::Text(rules.join(" ")),
        ],
    )?;
    Ok(qid)
}

/// The 422 answer to a rejected submission, after it was quarantined.
pub fn rejected(
    store: &Store,
    source: &str,
    method: &str,
    path: &str,
    body: &[u8],
    findings: &[(Option<String>, &Finding)],
) -> ApiError {
    let mut outcome = rejection(findings);
    let mut rules: Vec<&str> = findings
        .iter()
        .filter(|(_, f)| f.severity == Severity::Error)
        .map(|(_, f)| f.rule)
        .collect();
    rules.sort_unstable();
    rules.dedup();
    match quarantine(store, source, method, path, body, &outcome, &rules) {
        Ok(qid) => {
            outcome = outcome.with(
                "information",
                IssueCode::Informational,
                format!(
                    "Rejected and kept in quarantine as {qid}: GET $quarantine/{qid} shows it, \
                     POST $quarantine/{qid}/$resubmit takes the corrected submission. \
                     已退回并隔离保存，可修正后重新提交。"
                ),
                None,
            );
        }
        Err(e) => tracing::error!(error = %e, "A rejected submission could not be quarantined."),
    }
    ApiError::with_outcome(crate::error::Code::BusinessRule, outcome)
}

/// Records findings against a stored version (in the caller's transaction).
pub fn record_findings(
    tx: &mut Tx<'_>,
    source: &str,
    s: &Stored,
    findings: &[Finding],
) -> Result<(), StoreError> {
    for f in findings {
        record_finding(
            tx,
            source,
            s,
            f.rule,
            f.severity.as_str(),
            &f.expression,
            &f.en,
        )?;
    }
    Ok(())
}

/// Records one finding against a stored version — the intake rules' or another platform's
/// (an upstream's rejection) — in the caller's transaction.
pub fn record_finding(
    tx: &mut Tx<'_>,
    source: &str,
    s: &Stored,
    rule: &str,
    severity: &str,
    expression: &str,
    message: &str,
) -> Result<(), StoreError> {
    tx.conn().exec(
        "INSERT INTO qc_finding (src, at, rtype, id, version, rule, severity, expression, \
         message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        &[
            Val::Text(source.into()),
            Val::Int(now_ms()),
            Val::Text(s.rtype.clone()),
            Val::Text(s.id.clone()),
            Val::Int(s.version),
            Val::Text(rule.into()),
            Val::Text(severity.into()),
            Val::Text(expression.into()),
            Val::Text(message.into()),
        ],
    )?;
    Ok(())
}

/// Records an accepted version's warnings and its content fingerprint, in the write's own
/// transaction; a suspected wrong-patient filing also opens a work order to the source there.
pub fn record(
    tx: &mut Tx<'_>,
    policy: &hutong_quality::workorder::Policy,
    source: &str,
    s: &Stored,
    findings: &[Finding],
    fingerprint: &str,
) -> Result<(), StoreError> {
    let d = tx.conn().dialect();
    record_findings(tx, source, s, findings)?;
    if let Some(fp) = fingerprint_key(fingerprint) {
        // The version's own key (shard and rid) is at hand: no lookup of its route.
        let key = seen_key(source, &s.rtype, fp, s.shard);
        tx.conn()
            .exec(&seen_put(d), &[Val::Int(key), Val::Int(s.rid)])?;
    }
    if let Some(f) = findings.iter().find(|f| f.rule == "encounter-subject") {
        let order = crate::governance::orders::NewOrder {
            category: hutong_quality::workorder::Category::WrongPatient,
            description: format!(
                "疑似错挂患者：{} Suspected filing to the wrong patient: {}",
                f.zh, f.en
            ),
            priority: "urgent".into(),
            reporter: "platform quality control".into(),
            rule: Some(f.rule.into()),
            inputs: Vec::new(),
        };
        crate::governance::orders::create_in(tx, policy, &order, source, None, Some(s))?;
    }
    Ok(())
}

/// A quarantined submission as the API shows it.
pub fn item_json(r: &[Val], with_outcome: bool) -> Value {
    let mut v = json!({
        "id": r[0].text(),
        "source": r[1].text(),
        "received": hutong_fhir::date::format_instant(r[2].int()),
        "method": r[3].text(),
        "path": r[4].text(),
        "rules": r[5].text().split(' ').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
        "status": r[6].text(),
    });
    if r[7].int() > 0 {
        v["resolved"] = json!(hutong_fhir::date::format_instant(r[7].int()));
        v["resolution"] = json!(r[8].text());
    }
    if with_outcome {
        v["outcome"] = serde_json::from_str(r[9].text()).unwrap_or(Value::Null);
    }
    v
}

pub const ITEM_COLS: &str =
    "qid, src, at, method, path, rules, status, resolved_at, resolution, outcome";

#[cfg(test)]
mod tests {
    use super::*;

    /// A store made before fingerprints were one row of two integers (`qc_fp`: hex text;
    /// `qc_content`: source, type and id as text) keeps its duplicates detectable.
    fn moves_old_fingerprints(store: &Store, legacy: &str) {
        let v = json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"text": "x"}});
        store
            .write(&hutong_store::testing::AUDIT, |tx| {
                tx.update("Observation", "o1", v.clone(), None)
            })
            .unwrap();
        let fp = hutong_quality::fingerprint(&v);
        let (create, fp_val) = if legacy == "qc_fp" {
            (
                "CREATE TABLE qc_fp (src TEXT NOT NULL, rtype TEXT NOT NULL, fp TEXT NOT NULL, \
                 id TEXT NOT NULL, PRIMARY KEY (src, rtype, fp))",
                Val::Text(fp.clone()),
            )
        } else {
            (
                "CREATE TABLE qc_content (src TEXT NOT NULL, fp BIGINT NOT NULL, \
                 rtype TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (src, fp, rtype))",
                Val::Int(fingerprint_key(&fp).unwrap()),
            )
        };
        store.batch_admin(create).unwrap();
        store
            .exec_admin(
                &format!("INSERT INTO {legacy} (src, rtype, fp, id) VALUES (?, ?, ?, ?)"),
                &[
                    Val::Text("urn:a".into()),
                    Val::Text("Observation".into()),
                    fp_val,
                    Val::Text("o1".into()),
                ],
            )
            .unwrap();
        open(store).unwrap();
        let gone = store.dialect().table_exists_sql(legacy);
        assert_eq!(store.query_admin(&gone, &[]).unwrap()[0][0].int(), 0);
        // A second copy of the same content from the same source is found as a duplicate
        // of the first, by id; from another source it is not.
        let copy = json!({"resourceType": "Observation", "id": "o2", "status": "final",
            "code": {"text": "x"}});
        let checker = Checker::default();
        let dup = |src: &str| {
            let c = check(
                store,
                &checker,
                &Scope::All,
                src,
                &[&copy],
                HashSet::new(),
                false,
            )
            .unwrap();
            c.findings[0]
                .iter()
                .find(|f| f.rule == "duplicate")
                .map(|f| f.en.clone())
        };
        let found = dup("urn:a").expect("a duplicate");
        assert!(found.contains("o1"), "{found}");
        assert_eq!(dup("urn:b"), None);
        // Opening again is a no-op.
        open(store).unwrap();
        assert!(dup("urn:a").is_some());
        assert_eq!(
            fingerprint_key(&fp),
            fingerprint_key(&hutong_quality::fingerprint(&copy))
        );
        assert_eq!(fingerprint_key("short"), None);
    }

    /// Keys written before they had buckets (a full 64-bit hash) are given theirs when the
    /// store is opened, so content submitted before the upgrade is still found again.
    fn rebuckets_old_keys(store: &Store) {
        open(store).unwrap();
        let patient = json!({"resourceType": "Patient", "id": "p1", "name": [{"text": "王芳"}]});
        let obs = |id: &str| {
            json!({"resourceType": "Observation", "id": id, "status": "final",
                "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}})
        };
        store
            .write(&hutong_store::testing::AUDIT, |tx| {
                tx.update("Patient", "p1", patient.clone(), None)?;
                tx.update("Observation", "o1", obs("o1"), None)
            })
            .unwrap();
        assert_ne!(content_shard("Observation", &obs("o1")), 0);
        let fp = fingerprint_key(&hutong_quality::fingerprint(&obs("o1"))).unwrap();
        let old_key = hutong_mpi::block::key_hash(&format!("urn:a\u{0}Observation\u{0}{fp:016x}"));
        store
            .exec_admin(
                "INSERT INTO qc_seen (k, rid) SELECT ?, rid FROM res_route WHERE id = 'o1'",
                &[Val::Int(old_key)],
            )
            .unwrap();
        store
            .exec_admin("DELETE FROM meta WHERE k = 'qc_seen_buckets'", &[])
            .unwrap();
        let checker = Checker::default();
        let copy = obs("o2");
        let dup = || {
            let c = check(
                store,
                &checker,
                &Scope::All,
                "urn:a",
                &[&copy],
                HashSet::new(),
                false,
            )
            .unwrap();
            c.findings[0].iter().any(|f| f.rule == "duplicate")
        };
        assert!(!dup(), "an old key is not found by a bucketed lookup");
        open(store).unwrap();
        assert!(dup());
        let keys = store.query_admin("SELECT k FROM qc_seen", &[]).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            keys[0][0].int(),
            seen_key(
                "urn:a",
                "Observation",
                fp,
                content_shard("Observation", &copy)
            )
        );
    }

    #[test]
    fn old_keys_get_buckets() {
        rebuckets_old_keys(&hutong_store::testing::sqlite().store);
        if let Some(t) = hutong_store::testing::postgres() {
            rebuckets_old_keys(&t.store);
        }
    }

    #[test]
    fn old_fingerprints_move_sqlite() {
        for legacy in ["qc_fp", "qc_content"] {
            let t = hutong_store::testing::sqlite();
            moves_old_fingerprints(&t.store, legacy);
        }
    }

    #[test]
    fn old_fingerprints_move_postgres() {
        for legacy in ["qc_fp", "qc_content"] {
            if let Some(t) = hutong_store::testing::postgres() {
                moves_old_fingerprints(&t.store, legacy);
            }
        }
    }
}

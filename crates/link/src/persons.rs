//! One person, one record: every Patient an institution submits belongs to exactly one
//! platform-level FHIR `Person`, whose `link`s name the source Patients (assurance `level3`
//! when the matcher put it there, `level4` when a person did) and whose demographics are the
//! golden record chosen by survivorship rules.
//!
//! The registry here is an in-memory view of the stored Persons; the store stays the truth.
//! Every change — automatic or by the link-management API — is written as a new Person
//! version together with a `Provenance` saying who and why, in one transaction, so the
//! history of a person is the history of its Person resource and nothing is lost: a link is
//! undone by an unlink, a merge by a split back into the retired person.
//!
//! Automatic decisions are precision-first: a `certain` match links; two persons that a new
//! record joins are merged only when nothing says they differ (a steward's placement, a
//! review decision, different valid ID numbers, the twin and generation rules); anything
//! less goes to a review queue of `Task`s.
//!
//! One file past the ~800 lines we keep to, because the registry's decisions (link, merge,
//! split, review) keep one invariant together — every Patient in exactly one person — and its
//! tests check it across all of them.

use std::collections::{BTreeSet, HashMap, HashSet};

use hutong_fhir::date::{format_instant, now_ms};
use hutong_mpi::compare::known_apart;
use hutong_mpi::index::Grade;

use crate::candidates::Candidates;
use hutong_store::{Scope, StoreError, Stored, Tx};
use serde_json::{json, Value};

/// `meta.source` of everything the identity service writes.
pub const PLATFORM_SOURCE: &str = "urn:hutong:mpi";
/// Codes of the identity service: Provenance activities and the review Task.
pub const IDENTITY_CS: &str = "https://hutong.dev/fhir/CodeSystem/identity";
pub const REVIEW_CODE: &str = "match-review";
/// Who the automatic decisions are recorded as.
pub const LINKER: &str = "hutong-mpi (automatic linkage)";
/// Persons written per transaction when many change at once (the first build).
const FLUSH_EVERY: usize = 2_000;

#[derive(Debug, Clone)]
pub struct Link {
    /// `Patient/{id}`.
    pub patient: String,
    /// Placed by a person (assurance level4): the automatic linker never moves it.
    pub manual: bool,
}

#[derive(Debug, Clone, Default)]
pub struct PersonEntry {
    pub version: i64,
    pub active: bool,
    pub links: Vec<Link>,
    /// A retired person points at the one it was merged into.
    pub replaced_by: Option<String>,
}

impl PersonEntry {
    fn has_manual(&self) -> bool {
        self.links.iter().any(|l| l.manual)
    }
}

/// A change to be recorded as a Provenance once its Persons are written.
#[derive(Debug, Clone)]
pub struct Activity {
    pub code: &'static str,
    pub author: String,
    pub reason: String,
    /// Person ids whose new versions the activity produced.
    pub persons: Vec<String>,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// [`hutong_mpi::Thresholds::margin`], its default unless the deployment sets another.
#[derive(Debug, Clone, Copy)]
pub struct Margin(pub f64);

impl Default for Margin {
    fn default() -> Margin {
        Margin(hutong_mpi::Thresholds::default().margin)
    }
}

#[derive(Default)]
pub struct Registry {
    pub persons: HashMap<String, PersonEntry>,
    person_of: HashMap<String, String>,
    /// Patient pairs a reviewer decided are different people.
    apart: HashSet<(String, String)>,
    /// Patient pairs that already have a review Task (any status).
    queued: HashSet<(String, String)>,
    dirty: BTreeSet<String>,
    activities: Vec<Activity>,
    tasks: Vec<Value>,
    /// Source (`meta.source`) trust ranks for survivorship; higher wins, default 0.
    pub trust: HashMap<String, i32>,
    /// How much better (log2 odds) a record's best person must fit than another person known
    /// to be different for it to link ([`hutong_mpi::Thresholds::margin`]).
    pub margin: Margin,
    /// Persons whose links changed since the matcher last published them to the access
    /// decision's directory.
    pub touched: BTreeSet<String>,
    /// Set when the registry holds only the persons its decisions need (province scale,
    /// the database index): the rest stay in the store, read when a decision names them.
    lazy: Option<hutong_store::Store>,
    /// The first error reading persons in since the last [`Registry::take_error`]; whoever
    /// decided on what was read throws the decision away.
    failed: Option<StoreError>,
    /// A lazy registry's last known version of persons it let go, so that catching up does
    /// not report them changed again (which would empty the directory's cache each time).
    versions: HashMap<String, i64>,
}

/// The Patients a stored Person links (`Patient/{id}`).
pub fn patients_in(v: &Value) -> Vec<String> {
    entry_of(v, 0)
        .links
        .into_iter()
        .map(|l| l.patient)
        .collect()
}

/// Parses the links of a stored Person.
fn entry_of(v: &Value, version: i64) -> PersonEntry {
    let mut e = PersonEntry {
        version,
        active: v["active"].as_bool().unwrap_or(true),
        ..PersonEntry::default()
    };
    for l in v["link"].as_array().into_iter().flatten() {
        let Some(r) = l["target"]["reference"].as_str() else {
            continue;
        };
        if r.starts_with("Patient/") {
            e.links.push(Link {
                patient: r.to_string(),
                manual: l["assurance"] == "level4",
            });
        } else if let Some(p) = r.strip_prefix("Person/") {
            e.replaced_by = Some(p.to_string());
        }
    }
    e
}

impl Registry {
    /// Loads the stored Persons and review Tasks.
    pub fn load(store: &hutong_store::Store) -> Result<Registry, StoreError> {
        let mut reg = Registry::default();
        let mut after = i64::MIN;
        loop {
            let (page, last) = store.scan("Person", None, false, after, 5_000, &Scope::All)?;
            if page.is_empty() {
                break;
            }
            for s in &page {
                reg.apply_person(s);
            }
            after = last;
        }
        reg.load_tasks(store)?;
        Ok(reg)
    }

    /// A registry that reads persons in as decisions need them, for a store with more
    /// persons than an API node should hold: the review Tasks only are loaded.
    pub fn load_lazy(store: &hutong_store::Store) -> Result<Registry, StoreError> {
        let mut reg = Registry {
            lazy: Some(store.clone()),
            ..Registry::default()
        };
        reg.load_tasks(store)?;
        Ok(reg)
    }

    /// The store a lazy registry reads persons from.
    pub fn lazy_store(&self) -> Option<hutong_store::Store> {
        self.lazy.clone()
    }

    /// How many persons are held in memory.
    pub fn held(&self) -> usize {
        self.persons.len()
    }

    /// The error met reading persons in, if any, since the last call.
    pub fn take_error(&mut self) -> Option<StoreError> {
        self.failed.take()
    }

    /// Reads in the person of each of `patients` (a lazy registry; nothing otherwise).
    pub fn page_patients(&mut self, patients: &[&str]) {
        self.page_in(
            patients,
            |reg, p| reg.person_of.contains_key(p),
            |store, p| {
                let q = hutong_store::Query::parse("Person", &[("link".into(), p.into())], true)?;
                Ok(store.search(&q, &Scope::All)?.matches)
            },
        );
    }

    /// Reads in these persons (a lazy registry; nothing otherwise).
    pub fn page_persons(&mut self, persons: &[&str]) {
        self.page_in(
            persons,
            |reg, p| reg.persons.contains_key(p),
            |store, p| {
                Ok(store
                    .read("Person", p, &Scope::All)?
                    .found()
                    .into_iter()
                    .collect())
            },
        );
    }

    /// Reads in, for each wanted id the registry does not `hold`, the Persons `fetch` finds;
    /// the first failure is kept for [`Registry::take_error`] and stops further reads.
    fn page_in(
        &mut self,
        wanted: &[&str],
        hold: impl Fn(&Registry, &str) -> bool,
        fetch: impl Fn(&hutong_store::Store, &str) -> Result<Vec<Stored>, StoreError>,
    ) {
        let Some(store) = self.lazy.clone() else {
            return;
        };
        for id in wanted {
            if self.failed.is_some() || hold(self, id) {
                continue;
            }
            match fetch(&store, id) {
                Ok(found) => found.iter().for_each(|s| self.load_person(s, false)),
                Err(e) => self.failed = Some(e),
            }
        }
    }

    /// Lets a lazy registry's persons go once it has nothing unwritten: each decision reads
    /// in what it needs, so a node holds no more than one batch of decisions' persons.
    pub fn evict(&mut self) {
        if self.lazy.is_some() && !self.is_dirty() {
            self.persons.clear();
            self.person_of.clear();
        }
    }

    fn load_tasks(&mut self, store: &hutong_store::Store) -> Result<(), StoreError> {
        let reg = self;
        let mut after = i64::MIN;
        loop {
            let (page, last) = store.scan("Task", None, false, after, 5_000, &Scope::All)?;
            if page.is_empty() {
                break;
            }
            for s in &page {
                if let Ok(v) = s.json() {
                    reg.apply_task(&v);
                }
            }
            after = last;
        }
        Ok(())
    }

    /// Takes in a Person version written elsewhere (or read back from history).
    pub fn apply_person(&mut self, s: &Stored) {
        self.load_person(s, true);
    }

    /// Takes in a Person version; `changed`: its links may differ from what the access
    /// decision's directory holds.
    fn load_person(&mut self, s: &Stored, changed: bool) {
        if self
            .persons
            .get(&s.id)
            .is_some_and(|e| e.version >= s.version)
        {
            return;
        }
        if let Some(old) = self.persons.remove(&s.id) {
            for l in old.links {
                if self.person_of.get(&l.patient) == Some(&s.id) {
                    self.person_of.remove(&l.patient);
                }
            }
        }
        let e = if s.deleted {
            PersonEntry {
                version: s.version,
                ..PersonEntry::default()
            }
        } else {
            match s.json() {
                Ok(v) => entry_of(&v, s.version),
                Err(_) => return,
            }
        };
        for l in &e.links {
            self.person_of.insert(l.patient.clone(), s.id.clone());
        }
        self.persons.insert(s.id.clone(), e);
        if changed {
            self.touched.insert(s.id.clone());
        }
    }

    pub fn apply_task(&mut self, v: &Value) {
        if !is_review(v) {
            return;
        }
        let (Some(a), Some(b)) = review_pair(v) else {
            return;
        };
        self.queued.insert(pair(&a, &b));
        if decision(v) == Some("different") {
            self.apart.insert(pair(&a, &b));
        }
    }

    pub fn person_of(&self, patient: &str) -> Option<&str> {
        self.person_of.get(patient).map(String::as_str)
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.activities.is_empty() || !self.tasks.is_empty()
    }

    fn new_person(&mut self) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.persons.insert(
            id.clone(),
            PersonEntry {
                active: true,
                ..PersonEntry::default()
            },
        );
        id
    }

    /// Moves `patient` into `person` (out of any other), returning the person it left.
    fn place(&mut self, patient: &str, person: &str, manual: bool) -> Option<String> {
        let old = self.person_of.get(patient).cloned();
        if let Some(o) = &old {
            if let Some(e) = self.persons.get_mut(o) {
                e.links.retain(|l| l.patient != patient);
            }
            self.dirty.insert(o.clone());
        }
        let e = self.persons.entry(person.to_string()).or_default();
        e.active = true;
        e.replaced_by = None;
        e.links.push(Link {
            patient: patient.to_string(),
            manual,
        });
        self.person_of
            .insert(patient.to_string(), person.to_string());
        self.dirty.insert(person.to_string());
        old.filter(|o| o != person)
    }

    /// Moves every link of `source` into `target` and retires `source`.
    fn merge_into(&mut self, source: &str, target: &str, manual: bool) {
        let links = self
            .persons
            .get(source)
            .map(|e| e.links.clone())
            .unwrap_or_default();
        for l in links {
            self.place(&l.patient, target, manual || l.manual);
        }
        if let Some(e) = self.persons.get_mut(source) {
            e.active = false;
            e.replaced_by = Some(target.to_string());
        }
        self.dirty.insert(source.to_string());
    }

    fn record(&mut self, code: &'static str, author: &str, reason: String, persons: &[&str]) {
        self.activities.push(Activity {
            code,
            author: author.to_string(),
            reason,
            persons: persons.iter().map(|p| p.to_string()).collect(),
        });
    }

    /// Why two persons must not be merged automatically, if anything says so.
    fn merge_blocker(&self, index: &dyn Candidates, a: &str, b: &str) -> Option<String> {
        let (Some(ea), Some(eb)) = (self.persons.get(a), self.persons.get(b)) else {
            return Some("unknown person".into());
        };
        if ea.has_manual() || eb.has_manual() {
            return Some("a person placed by a steward is involved".into());
        }
        for x in &ea.links {
            for y in &eb.links {
                if self.apart.contains(&pair(&x.patient, &y.patient)) {
                    return Some(format!(
                        "a reviewer decided {} and {} are different people",
                        x.patient, y.patient
                    ));
                }
                if let (Some(rx), Some(ry)) = (index.record(&x.patient), index.record(&y.patient)) {
                    if known_apart(&rx, &ry) {
                        return Some(format!(
                            "{} and {} are known to be different people",
                            x.patient, y.patient
                        ));
                    }
                }
            }
        }
        None
    }

    fn queue_review(&mut self, patient: &str, candidate: &str, probability: f64, why: &str) {
        let key = pair(patient, candidate);
        if self.queued.contains(&key) || self.apart.contains(&key) {
            return;
        }
        self.queued.insert(key);
        self.tasks.push(json!({
            "resourceType": "Task",
            "status": "requested",
            "intent": "proposal",
            "priority": "routine",
            "code": {"coding": [{"system": IDENTITY_CS, "code": REVIEW_CODE, "display": "Possible duplicate person: review"}]},
            "description": format!("{patient} may be the same person as {candidate}: {why}"),
            "focus": {"reference": patient},
            "authoredOn": format_instant(now_ms()),
            "input": [
                {"type": {"text": "candidate"}, "valueReference": {"reference": candidate}},
                {"type": {"text": "score"}, "valueDecimal": (probability * 1e4).round() / 1e4}
            ]
        }));
    }

    /// Decides where a new or changed Patient belongs.
    pub fn assign(&mut self, index: &dyn Candidates, patient: &str) {
        self.page_patients(&[patient]);
        let current = self.person_of.get(patient).cloned();
        let pinned = current
            .as_ref()
            .and_then(|c| self.persons.get(c))
            .is_some_and(|e| e.links.iter().any(|l| l.patient == patient && l.manual));
        let Some(record) = index.record(patient) else {
            return;
        };
        let matches: Vec<_> = index
            .matches(&record, 20)
            .into_iter()
            .filter(|m| m.id != patient)
            .collect();
        let ids: Vec<&str> = matches.iter().map(|m| m.id.as_str()).collect();
        self.page_patients(&ids);
        // The persons this record certainly belongs to, strongest first.
        let mut targets: Vec<(String, String, f64)> = Vec::new();
        let mut best_odds: Vec<f64> = Vec::new();
        for m in matches.iter().filter(|m| m.grade == Grade::Certain) {
            if self.apart.contains(&pair(patient, &m.id)) {
                continue;
            }
            if let Some(p) = self.person_of.get(&m.id) {
                if !targets.iter().any(|(t, _, _)| t == p) {
                    targets.push((p.clone(), m.id.clone(), m.probability));
                    best_odds.push(m.odds);
                }
            }
        }
        // A record that fits two people known to be different about equally well belongs to
        // neither until a person decides: it stays where it is (a person of its own when
        // new), and both candidates go to review side by side.
        if !pinned && !targets.is_empty() {
            // Rivals: the best match of each other person within the margin, certain or not.
            let mut rivals: Vec<(String, String, f64)> = Vec::new();
            for m in &matches {
                if m.odds <= best_odds[0] - self.margin.0 {
                    break;
                }
                let Some(p) = self.person_of.get(&m.id).cloned() else {
                    continue;
                };
                if p == targets[0].0
                    || rivals.iter().any(|(r, _, _)| *r == p)
                    || self.apart.contains(&pair(patient, &m.id))
                {
                    continue;
                }
                if self.merge_blocker(index, &p, &targets[0].0).is_some() {
                    rivals.push((p, m.id.clone(), m.probability));
                }
            }
            if !rivals.is_empty() {
                if current.is_none() {
                    let id = self.new_person();
                    self.place(patient, &id, false);
                }
                let (first, via, prob) = targets[0].clone();
                for (other, other_via, other_prob) in rivals {
                    let why = format!(
                        "fits Person/{first} (through {via}) and Person/{other} (through \
                         {other_via}) about equally well, and they are different people"
                    );
                    self.queue_review(patient, &via, prob, &why);
                    self.queue_review(patient, &other_via, other_prob, &why);
                }
                return;
            }
        }
        if pinned {
            // A steward placed it: only suggest, never move.
            for (t, via, prob) in &targets {
                if Some(t) != current.as_ref() {
                    self.queue_review(
                        patient,
                        via,
                        *prob,
                        "certain match, but placed by a steward",
                    );
                }
            }
        } else {
            match (&current, targets.first().cloned()) {
                (None, None) => {
                    let id = self.new_person();
                    self.place(patient, &id, false);
                }
                (Some(_), None) => {}
                (cur, Some((first, via, prob))) => {
                    let survivor = match cur {
                        Some(c) if targets.iter().any(|(t, _, _)| t == c) => c.clone(),
                        _ => first.clone(),
                    };
                    if cur.as_ref() != Some(&survivor) {
                        let alone = cur
                            .as_ref()
                            .and_then(|c| self.persons.get(c))
                            .is_none_or(|e| e.links.len() <= 1);
                        if alone {
                            let left = self.place(patient, &survivor, false);
                            if let Some(l) = &left {
                                if let Some(e) = self.persons.get_mut(l) {
                                    e.active = false;
                                    e.replaced_by = Some(survivor.clone());
                                }
                            }
                            let mut touched = vec![survivor.as_str()];
                            if let Some(l) = &left {
                                touched.push(l);
                            }
                            self.record(
                                "link",
                                LINKER,
                                format!("certain match with {via} (probability {prob:.4})"),
                                &touched,
                            );
                        } else {
                            // It already shares a person with others: joining two persons is
                            // a merge, handled below with the same safeguards.
                            let c = cur.clone().expect("not alone means placed");
                            targets.push((c, patient.to_string(), 1.0));
                        }
                    }
                    // Re-evaluation: this record joins persons that were kept apart.
                    let others: Vec<(String, String, f64)> = targets
                        .iter()
                        .filter(|(t, _, _)| *t != survivor)
                        .cloned()
                        .collect();
                    for (t, via, prob) in others {
                        if self.persons.get(&t).is_none_or(|e| !e.active) {
                            continue;
                        }
                        match self.merge_blocker(index, &t, &survivor) {
                            None => {
                                self.merge_into(&t, &survivor, false);
                                self.record(
                                    "merge",
                                    LINKER,
                                    format!(
                                        "re-evaluation: {patient} is a certain match with {via} \
                                         (probability {prob:.4}) and with Person/{survivor}"
                                    ),
                                    &[&survivor, &t],
                                );
                            }
                            Some(why) => self.queue_review(patient, &via, prob, &why),
                        }
                    }
                }
            }
        }
        // The probable ones a person should look at.
        let mine = self.person_of.get(patient).cloned();
        for m in matches.iter().filter(|m| m.grade == Grade::Probable) {
            if self.person_of.get(&m.id) != mine.as_ref() || mine.is_none() {
                self.queue_review(patient, &m.id, m.probability, "probable match");
            }
        }
    }

    /// A Patient was deleted: its link goes.
    pub fn remove(&mut self, patient: &str) {
        self.page_patients(&[patient]);
        if let Some(p) = self.person_of.remove(patient) {
            if let Some(e) = self.persons.get_mut(&p) {
                e.links.retain(|l| l.patient != patient);
                if e.links.is_empty() {
                    e.active = false;
                }
            }
            self.dirty.insert(p);
        }
    }

    /// Writes when enough has changed to be worth a transaction of its own.
    pub fn maybe_flush(
        &mut self,
        store: &hutong_store::Store,
        audit: &hutong_audit::Entry,
    ) -> Result<(), StoreError> {
        if self.dirty.len() >= FLUSH_EVERY {
            self.flush(store, audit)?;
        }
        Ok(())
    }

    /// Writes every changed Person, then the Provenance of each activity (naming the Person
    /// versions it produced) and new review Tasks — one transaction, audited as `audit`.
    pub fn flush(
        &mut self,
        store: &hutong_store::Store,
        audit: &hutong_audit::Entry,
    ) -> Result<(), StoreError> {
        if !self.is_dirty() {
            return Ok(());
        }
        let dirty: Vec<String> = std::mem::take(&mut self.dirty).into_iter().collect();
        self.touched.extend(dirty.iter().cloned());
        let activities = std::mem::take(&mut self.activities);
        let tasks = std::mem::take(&mut self.tasks);
        let now = now_ms();
        let written = store.write(&audit.hook(), |tx| {
            let mut versions: HashMap<String, (i64, i64)> = HashMap::new();
            for id in &dirty {
                let Some(e) = self.persons.get(id) else {
                    continue;
                };
                let mut patients = Vec::new();
                for l in &e.links {
                    let pid = l.patient.trim_start_matches("Patient/");
                    if let Some(s) = tx.read("Patient", pid)? {
                        if !s.deleted {
                            patients.push(s.json()?);
                        }
                    }
                }
                let mut v = person_resource(id, e, &patients, &self.trust);
                hutong_fhir::vocab::stamp(&mut v, PLATFORM_SOURCE, now);
                let (s, _) = tx.update("Person", id, v, None)?;
                versions.insert(id.clone(), (s.version, s.last_updated));
            }
            for a in &activities {
                let mut v = provenance(a, &versions, now);
                hutong_fhir::vocab::stamp(&mut v, PLATFORM_SOURCE, now);
                tx.create("Provenance", None, v)?;
            }
            for t in &tasks {
                let mut v = t.clone();
                // A review names two people's records: for the platform, not for their
                // institutions.
                hutong_fhir::security::add_labels(&mut v, hutong_fhir::security::ACCESS_RECORD);
                hutong_fhir::vocab::stamp(&mut v, PLATFORM_SOURCE, now);
                tx.create("Task", None, v)?;
            }
            Ok::<_, StoreError>(versions)
        });
        match written {
            Ok(versions) => {
                for (id, (v, _)) in versions {
                    if let Some(e) = self.persons.get_mut(&id) {
                        e.version = v;
                    }
                    if self.lazy.is_some() {
                        if self.versions.len() >= 100_000 {
                            self.versions.clear();
                        }
                        self.versions.insert(id, v);
                    }
                }
                Ok(())
            }
            Err(e) => {
                // Nothing was written: keep the work for the next flush.
                self.dirty.extend(dirty);
                self.activities = activities;
                self.tasks = tasks;
                Err(e)
            }
        }
    }

    /// Reverts the in-memory view to the store after a failed operation.
    pub fn discard_pending(&mut self) {
        self.dirty.clear();
        self.activities.clear();
        self.tasks.clear();
    }

    // --- Link management by API (each returns the persons it changed). ---

    /// Puts `patient` into `person`, placed by `author`.
    pub fn link(
        &mut self,
        index: &dyn Candidates,
        person: &str,
        patient: &str,
        author: &str,
        reason: &str,
        force: bool,
    ) -> Result<(), String> {
        self.page_persons(&[person]);
        self.page_patients(&[patient]);
        self.active_person(person)?;
        let rp = index.record(patient);
        if !self.person_of.contains_key(patient) && rp.is_none() {
            return Err(format!("{patient} is not known"));
        }
        if !force {
            if let Some(rp) = rp {
                let e = &self.persons[person];
                for l in &e.links {
                    if l.patient != patient
                        && index
                            .record(&l.patient)
                            .is_some_and(|r| known_apart(&rp, &r))
                    {
                        return Err(format!(
                            "{patient} and {} have different valid ID numbers or are twins or \
                             generations apart; pass force=true to link them anyway",
                            l.patient
                        ));
                    }
                }
            }
        }
        let left = self.place(patient, person, true);
        let mut touched = vec![person];
        if let Some(l) = &left {
            if let Some(e) = self.persons.get_mut(l) {
                if e.links.is_empty() {
                    e.active = false;
                    e.replaced_by = Some(person.to_string());
                }
            }
            touched.push(l);
        }
        self.record("link", author, reason.to_string(), &touched);
        Ok(())
    }

    /// Takes `patient` out of `person` into a person of its own, where it stays.
    pub fn unlink(
        &mut self,
        person: &str,
        patient: &str,
        author: &str,
        reason: &str,
    ) -> Result<String, String> {
        self.page_persons(&[person]);
        self.active_person(person)?;
        if self.person_of.get(patient).map(String::as_str) != Some(person) {
            return Err(format!("{patient} is not linked to Person/{person}"));
        }
        let id = self.new_person();
        self.place(patient, &id, true);
        self.record("unlink", author, reason.to_string(), &[person, &id]);
        Ok(id)
    }

    /// Merges `source` into `target`: `source` is retired and points at `target`.
    pub fn merge(
        &mut self,
        target: &str,
        source: &str,
        author: &str,
        reason: &str,
    ) -> Result<(), String> {
        self.page_persons(&[target, source]);
        self.active_person(target)?;
        self.active_person(source)?;
        if target == source {
            return Err("A person cannot be merged into itself".into());
        }
        self.merge_into(source, target, true);
        self.record("merge", author, reason.to_string(), &[target, source]);
        Ok(())
    }

    /// Moves `patients` out of `person` into `into` (a retired person is brought back, which
    /// undoes a merge) or into a new person.
    pub fn split(
        &mut self,
        person: &str,
        patients: &[String],
        into: Option<&str>,
        author: &str,
        reason: &str,
    ) -> Result<String, String> {
        self.page_persons(&[person]);
        self.page_persons(&into.into_iter().collect::<Vec<_>>());
        self.active_person(person)?;
        if patients.is_empty() {
            return Err("split needs at least one patient".into());
        }
        for p in patients {
            if self.person_of.get(p).map(String::as_str) != Some(person) {
                return Err(format!("{p} is not linked to Person/{person}"));
            }
        }
        let into = match into {
            Some(i) if i == person => return Err("split into the same person".into()),
            Some(i) if self.persons.contains_key(i) => i.to_string(),
            Some(i) => return Err(format!("Person/{i} is not known")),
            None => self.new_person(),
        };
        for p in patients {
            self.place(p, &into, true);
        }
        if self.persons.get(person).is_some_and(|e| e.links.is_empty()) {
            let e = self.persons.get_mut(person).expect("checked");
            e.active = false;
        }
        self.record("split", author, reason.to_string(), &[person, &into]);
        Ok(into)
    }

    /// A reviewer's decision on a review Task's pair.
    pub fn decide(
        &mut self,
        a: &str,
        b: &str,
        same: bool,
        author: &str,
        reason: &str,
    ) -> Result<(), String> {
        self.page_patients(&[a, b]);
        if same {
            let (Some(pa), Some(pb)) = (
                self.person_of.get(a).cloned(),
                self.person_of.get(b).cloned(),
            ) else {
                return Err(format!("{a} or {b} has no person"));
            };
            if pa != pb {
                self.merge(&pb, &pa, author, reason)?;
            }
        } else {
            self.apart.insert(pair(a, b));
            if self.person_of.contains_key(a) && self.person_of.get(a) == self.person_of.get(b) {
                let p = self.person_of[a].clone();
                self.unlink(&p, a, author, reason)?;
            }
        }
        Ok(())
    }

    fn active_person(&self, id: &str) -> Result<(), String> {
        match self.persons.get(id) {
            Some(e) if e.active => Ok(()),
            Some(e) => Err(match &e.replaced_by {
                Some(r) => format!("Person/{id} was merged into Person/{r}"),
                None => format!("Person/{id} is no longer active"),
            }),
            None => Err(format!("Person/{id} is not known")),
        }
    }

    /// The Patients of a person.
    pub fn patients(&self, person: &str) -> Vec<String> {
        self.persons
            .get(person)
            .map(|e| e.links.iter().map(|l| l.patient.clone()).collect())
            .unwrap_or_default()
    }
}

fn is_review(v: &Value) -> bool {
    v["code"]["coding"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["system"] == IDENTITY_CS && c["code"] == REVIEW_CODE)
    })
}

/// The (focus, candidate) Patients of a review Task.
pub fn review_pair(v: &Value) -> (Option<String>, Option<String>) {
    let focus = v["focus"]["reference"].as_str().map(String::from);
    let cand = v["input"].as_array().and_then(|i| {
        i.iter()
            .find(|x| x["type"]["text"] == "candidate")
            .and_then(|x| x["valueReference"]["reference"].as_str())
            .map(String::from)
    });
    (focus, cand)
}

fn decision(v: &Value) -> Option<&str> {
    v["output"].as_array().and_then(|o| {
        o.iter()
            .find(|x| x["type"]["text"] == "decision")
            .and_then(|x| x["valueCode"].as_str())
    })
}

pub fn is_review_task(v: &Value) -> bool {
    is_review(v)
}

fn provenance(a: &Activity, versions: &HashMap<String, (i64, i64)>, now: i64) -> Value {
    let target: Vec<Value> = a
        .persons
        .iter()
        .map(|p| match versions.get(p) {
            Some((v, _)) => json!({"reference": format!("Person/{p}/_history/{v}")}),
            None => json!({"reference": format!("Person/{p}")}),
        })
        .collect();
    let display = match a.code {
        "link" => "Link a patient record to a person",
        "unlink" => "Unlink a patient record from a person",
        "merge" => "Merge two persons",
        "split" => "Split patient records off a person",
        _ => "Identity change",
    };
    json!({
        "resourceType": "Provenance",
        "target": target,
        "recorded": format_instant(now),
        "activity": {"coding": [{"system": IDENTITY_CS, "code": a.code, "display": display}]},
        "reason": [{"text": a.reason}],
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": if a.author == LINKER { "assembler" } else { "verifier" }}]},
            "who": {"display": a.author}
        }]
    })
}

/// The resident ID number (18 characters, check character valid) of a Patient, if any.
fn valid_id(p: &Value) -> Option<hutong_cn::idcard::IdNumber> {
    p["identifier"]
        .as_array()?
        .iter()
        .filter(|i| i["system"] == hutong_mpi::fhir::ID_SYSTEM)
        .find_map(|i| hutong_cn::idcard::IdNumber::parse(i["value"].as_str()?).ok())
}

/// The Person resource: its links and the golden record. Survivorship: sources are ranked by
/// trust, then by recency; each element comes from the best-ranked Patient that has it; the
/// resident ID number only from a Patient whose number is valid (verified by its check
/// character), and the birth date and gender from one consistent with that number. Every
/// identifier of every linked Patient is carried, so `Person?identifier=` finds the person by
/// any institution's MRN.
pub fn person_resource(
    id: &str,
    e: &PersonEntry,
    patients: &[Value],
    trust: &HashMap<String, i32>,
) -> Value {
    let rank = |p: &Value| {
        let src = p["meta"]["source"].as_str().unwrap_or("");
        (
            trust.get(src).copied().unwrap_or(0),
            p["meta"]["lastUpdated"].as_str().unwrap_or("").to_string(),
        )
    };
    let mut ranked: Vec<&Value> = patients.iter().collect();
    ranked.sort_by_key(|p| std::cmp::Reverse(rank(p)));
    let first = |k: &str| {
        ranked
            .iter()
            .map(|p| &p[k])
            .find(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
            .cloned()
    };
    let verified = ranked.iter().find_map(|p| valid_id(p).map(|i| (i, *p)));
    let mut identifiers: Vec<Value> = Vec::new();
    if let Some((idn, _)) = &verified {
        identifiers.push(json!({"use": "official", "system": hutong_mpi::fhir::ID_SYSTEM, "value": idn.as_str()}));
    }
    for p in &ranked {
        for i in p["identifier"].as_array().into_iter().flatten() {
            if i["system"] == hutong_mpi::fhir::ID_SYSTEM {
                continue;
            }
            let key = json!({"system": i["system"], "value": i["value"]});
            if !identifiers
                .iter()
                .any(|x| x["system"] == key["system"] && x["value"] == key["value"])
            {
                let mut x = json!({"value": i["value"]});
                if i["system"].is_string() {
                    x["system"] = i["system"].clone();
                }
                if i["type"].is_object() {
                    x["type"] = i["type"].clone();
                }
                identifiers.push(x);
            }
        }
    }
    let mut v = json!({"resourceType": "Person", "id": id, "active": e.active});
    if !identifiers.is_empty() {
        v["identifier"] = Value::Array(identifiers);
    }
    for k in ["name", "telecom", "address"] {
        if let Some(x) = first(k) {
            v[k] = x;
        }
    }
    match &verified {
        Some((idn, _)) => {
            // The verified number settles birth date and gender.
            let (y, m, d) = idn.birth_date();
            v["birthDate"] = json!(format!("{y:04}-{m:02}-{d:02}"));
            v["gender"] = json!(if idn.is_male() { "male" } else { "female" });
        }
        None => {
            if let Some(x) = first("birthDate") {
                v["birthDate"] = x;
            }
            if let Some(x) = first("gender") {
                v["gender"] = x;
            }
        }
    }
    let mut links: Vec<Value> = e
        .links
        .iter()
        .map(|l| {
            json!({"target": {"reference": l.patient}, "assurance": if l.manual { "level4" } else { "level3" }})
        })
        .collect();
    if let Some(r) = &e.replaced_by {
        links.push(json!({"target": {"reference": format!("Person/{r}")}, "assurance": "level4"}));
    }
    if !links.is_empty() {
        v["link"] = Value::Array(links);
    }
    v
}

/// Catches the registry up with Person versions written by others (another process, a
/// direct PUT), oldest first.
pub fn catch_up(
    reg: &mut Registry,
    store: &hutong_store::Store,
    since: &mut i64,
) -> Result<(), StoreError> {
    let from = since.saturating_sub(5_000);
    for k in store.changes_since("Person", from)? {
        *since = (*since).max(k.last_updated);
        if reg.lazy.is_some() && !reg.persons.contains_key(&k.id) {
            // Not held here: read in when a decision needs it; the directory forgets it.
            if reg.versions.get(&k.id).is_none_or(|v| *v < k.version) {
                if reg.versions.len() >= 100_000 {
                    reg.versions.clear();
                }
                reg.versions.insert(k.id.clone(), k.version);
                reg.touched.insert(k.id);
            }
            continue;
        }
        if reg
            .persons
            .get(&k.id)
            .is_some_and(|e| e.version >= k.version)
        {
            continue;
        }
        if let Some(s) = store
            .vread("Person", &k.id, k.version, &Scope::All)?
            .found()
        {
            reg.apply_person(&s);
        }
    }
    Ok(())
}

/// Writes a Task update (a review decision) in the same way as the registry's writes.
pub fn write_task(tx: &mut Tx<'_>, id: &str, mut v: Value) -> Result<Stored, StoreError> {
    hutong_fhir::security::add_labels(&mut v, hutong_fhir::security::ACCESS_RECORD);
    hutong_fhir::vocab::stamp(&mut v, PLATFORM_SOURCE, now_ms());
    tx.update("Task", id, v, None).map(|(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survivorship_prefers_trusted_recent_and_verified_values() {
        let id = hutong_cn::idcard::make(330106, 1990, 4, 8, 22);
        let a = json!({"resourceType": "Patient", "meta": {"source": "urn:clinic", "lastUpdated": "2026-01-02T00:00:00Z"},
            "identifier": [{"system": "urn:mrn:clinic", "value": "7"}, {"system": hutong_mpi::fhir::ID_SYSTEM, "value": "330106199004080229"}],
            "name": [{"text": "新名"}], "birthDate": "1990-04-09", "gender": "male"});
        let b = json!({"resourceType": "Patient", "meta": {"source": "urn:hospital", "lastUpdated": "2025-01-02T00:00:00Z"},
            "identifier": [{"system": "urn:mrn:hospital", "value": "9"}, {"system": hutong_mpi::fhir::ID_SYSTEM, "value": id}],
            "name": [{"text": "旧名"}], "birthDate": "1990-04-08", "gender": "female"});
        let e = PersonEntry {
            version: 0,
            active: true,
            links: vec![
                Link {
                    patient: "Patient/a".into(),
                    manual: false,
                },
                Link {
                    patient: "Patient/b".into(),
                    manual: true,
                },
            ],
            replaced_by: None,
        };
        let mut trust = HashMap::new();
        let v = person_resource("p", &e, &[a.clone(), b.clone()], &trust);
        assert_eq!(v["name"][0]["text"], "新名", "most recent wins");
        // The clinic's ID number fails its check character: the hospital's is the verified one,
        // and birth date and gender follow it.
        assert_eq!(v["identifier"][0]["value"], id.as_str());
        assert_eq!(v["birthDate"], "1990-04-08");
        assert_eq!(
            v["gender"],
            if hutong_cn::idcard::IdNumber::parse(&id).unwrap().is_male() {
                "male"
            } else {
                "female"
            }
        );
        let systems: Vec<&str> = v["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["system"].as_str())
            .collect();
        assert!(systems.contains(&"urn:mrn:clinic") && systems.contains(&"urn:mrn:hospital"));
        assert_eq!(v["link"][1]["assurance"], "level4");
        trust.insert("urn:hospital".to_string(), 5);
        let v = person_resource("p", &e, &[a, b], &trust);
        assert_eq!(v["name"][0]["text"], "旧名", "trusted source wins");
        let back = entry_of(&v, 3);
        assert_eq!(back.links.len(), 2);
        assert!(back.links[1].manual && !back.links[0].manual);
    }
}

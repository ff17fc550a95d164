//! Patient matching against the live store (`Patient/$match`) and the linker that gives
//! every Patient its person. The index of every current Patient is either in memory (the
//! embedded default: built on first use from the Patients) or in the database (the default
//! on PostgreSQL: [`crate::mpi_store`], shared by every API node and kept across restarts);
//! either way it is caught up from the Patient history before each match, so every write
//! path (REST, transactions, bulk import, another process) is seen without hooks. The model
//! is re-estimated by EM from the store's own Patients as they grow; until there are
//! enough, starting values are used.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use hutong_mpi::index::{Grade, Index, Match};
use hutong_mpi::{block, fhir::raw_from_patient, Model, Record};
use hutong_store::{Scope, Store, StoreError, Stored};

pub use crate::candidates::Candidates;
use crate::mpi_store::{Put, StoredIndex};
use crate::persons::Registry;

/// Patients needed before EM is trusted over the starting values.
const TRAIN_AT: usize = 1_000;
/// Writes may commit a little after the time they were stamped: re-read this much history.
const OVERLAP_MS: i64 = 5_000;
/// Patients indexed per transaction when a database index is first built.
const BUILD_PAGE: usize = 5_000;

/// Where the matching index lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// In this process, rebuilt from the Patients when the server starts: fastest, for a
    /// city's worth of residents on one machine.
    Memory,
    /// In the database: nothing per person in the API node, nothing rebuilt on restart.
    Database,
}

impl IndexKind {
    /// Memory on the embedded store, the database on PostgreSQL.
    pub fn default_for(d: hutong_store::sql::Dialect) -> IndexKind {
        if d.embedded() {
            IndexKind::Memory
        } else {
            IndexKind::Database
        }
    }
}

/// The index, wherever it lives.
enum Idx {
    Memory(Index),
    Stored(StoredIndex),
}

impl Idx {
    fn candidates(&self) -> &dyn Candidates {
        match self {
            Idx::Memory(i) => i,
            Idx::Stored(s) => s,
        }
    }

    fn take_error(&self) -> Option<StoreError> {
        match self {
            Idx::Memory(_) => None,
            Idx::Stored(s) => s.take_error(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Idx::Memory(i) => i.len(),
            Idx::Stored(s) => s.len(),
        }
    }

    fn set_thresholds(&mut self, t: hutong_mpi::Thresholds) {
        let (c, p, n) = match self {
            Idx::Memory(i) => (&mut i.certain, &mut i.probable, &mut i.population),
            Idx::Stored(s) => (&mut s.certain, &mut s.probable, &mut s.population),
        };
        (*c, *p, *n) = (t.link, t.review, t.population);
    }
}

#[derive(Default)]
struct State {
    index: Option<Idx>,
    kind: Option<IndexKind>,
    synced: i64,
    trained_at: usize,
    registry: Option<Registry>,
    persons_synced: i64,
    trust: std::collections::HashMap<String, i32>,
    thresholds: hutong_mpi::Thresholds,
}

/// Which Patients make up each person, as the access decision reads it: a copy of the
/// registry's links, updated whenever they change, readable without waiting for linking.
/// With a lazy registry (the database index) it holds only what was read: a person it does
/// not hold is read from the store, kept until it changes.
#[derive(Default)]
pub struct Links {
    patients: HashMap<String, Vec<String>>,
    generation: u64,
    store: Option<Store>,
    read: Mutex<HashMap<String, Vec<String>>>,
}

/// Persons read into a lazy directory before it starts over.
const READ_KEEP: usize = 200_000;

/// A read view of [`Links`].
pub struct LinkView<'a>(RwLockReadGuard<'a, Links>);

impl hutong_access::Directory for LinkView<'_> {
    fn patients_of(&self, person: &str) -> Vec<String> {
        if let Some(p) = self.0.patients.get(person) {
            return p.clone();
        }
        let Some(store) = &self.0.store else {
            return Vec::new();
        };
        let mut read = self.0.read.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = read.get(person) {
            return p.clone();
        }
        // A person that cannot be read has no Patients for this decision: less access, never
        // more.
        let found = match store.read("Person", person, &Scope::All) {
            Ok(l) => l.found(),
            Err(e) => {
                tracing::warn!(person, error = %e, "Reading a person's links failed.");
                return Vec::new();
            }
        };
        let patients: Vec<String> = found
            .filter(|s| !s.deleted)
            .and_then(|s| s.json().ok())
            .map(|v| crate::persons::patients_in(&v))
            .unwrap_or_default()
            .into_iter()
            .map(|x| x.trim_start_matches("Patient/").to_string())
            .collect();
        if read.len() >= READ_KEEP {
            read.clear();
        }
        read.insert(person.to_string(), patients.clone());
        patients
    }
}

/// A person's id and its Patients' ids.
pub type PersonPatients = (String, Vec<String>);

/// How many of `$match`'s near candidates are compared with one another for a pair known to
/// be different people.
const NEAR_COMPARED: usize = 20;

#[derive(Default)]
pub struct Matcher {
    state: Mutex<State>,
    links: RwLock<Links>,
}

/// The audit entry of automatic linking.
pub fn linker_entry() -> hutong_audit::Entry {
    hutong_audit::Entry {
        action: "link".into(),
        outcome: 200,
        who: hutong_audit::Who {
            kind: "platform".into(),
            subject: crate::persons::LINKER.into(),
            ..Default::default()
        },
        purpose: Some("HSYSADMIN".into()),
        request: "automatic linkage of new Patients to persons".into(),
        ..Default::default()
    }
}

fn record_of(s: &Stored) -> Option<hutong_mpi::Record> {
    s.json().ok().map(|v| raw_from_patient(&v).normalize())
}

impl Matcher {
    /// Matches a Patient resource against every indexed Patient, best first.
    pub fn matches(
        &self,
        store: &Store,
        patient: &serde_json::Value,
        limit: usize,
    ) -> Result<Vec<Match>, StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        sync(&mut st, store)?;
        self.publish(&mut st);
        let record = raw_from_patient(patient).normalize();
        let index = st.index.as_ref().expect("built by sync");
        let self_id = patient["id"].as_str().map(|id| format!("Patient/{id}"));
        let found = index.candidates().matches(&record, limit + 1);
        if let Some(e) = index.take_error() {
            return Err(e);
        }
        let mut found: Vec<Match> = found
            .into_iter()
            .filter(|m| Some(&m.id) != self_id.as_ref())
            .take(limit)
            .collect();
        // A record that fits two people known to be different about equally well is certain
        // of neither: the linker would not link it, and `$match` does not call it certain.
        // The near candidates are compared pairwise, not only with the best: the best may be
        // a record without an ID number that is itself undecided between the two.
        let candidates = index.candidates();
        if let Some(best) = found.first().filter(|m| m.grade == Grade::Certain) {
            let floor = best.odds - st.thresholds.margin;
            let near: Vec<_> = found
                .iter()
                .take_while(|m| m.odds > floor)
                .take(NEAR_COMPARED)
                .filter_map(|m| candidates.record(&m.id))
                .collect();
            let rival = near.iter().enumerate().any(|(i, x)| {
                near[i + 1..]
                    .iter()
                    .any(|y| hutong_mpi::compare::known_apart(x, y))
            });
            if rival {
                for m in found.iter_mut().filter(|m| m.grade == Grade::Certain) {
                    m.grade = Grade::Probable;
                }
            }
        }
        Ok(found)
    }

    /// Catches up with the store: indexes new Patient versions and gives each its person.
    pub fn sync(&self, store: &Store) -> Result<(), StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let r = sync(&mut st, store);
        self.publish(&mut st);
        r
    }

    /// The persons' Patients as the access decision sees them, and their generation (which
    /// changes whenever any link does).
    pub fn directory(&self) -> (LinkView<'_>, u64) {
        let g = self.links.read().unwrap_or_else(|e| e.into_inner());
        let generation = g.generation;
        (LinkView(g), generation)
    }

    /// Copies the links of the persons the registry changed into the directory.
    fn publish(&self, st: &mut State) {
        let Some(reg) = st.registry.as_mut() else {
            return;
        };
        if reg.touched.is_empty() {
            return;
        }
        let touched = std::mem::take(&mut reg.touched);
        let mut links = self.links.write().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = reg.lazy_store() {
            // What changed is forgotten and read again when asked.
            links.store.get_or_insert(store);
            let read = links.read.get_mut().unwrap_or_else(|e| e.into_inner());
            for p in &touched {
                read.remove(p);
            }
            for p in &touched {
                links.patients.remove(p);
            }
            links.generation += 1;
            return;
        }
        for p in touched {
            let pts: Vec<String> = reg
                .patients(&p)
                .into_iter()
                .map(|x| x.trim_start_matches("Patient/").to_string())
                .collect();
            if pts.is_empty() {
                links.patients.remove(&p);
            } else {
                links.patients.insert(p, pts);
            }
        }
        links.generation += 1;
    }

    /// Runs a link-management change on the caught-up registry and writes it. A change that
    /// fails leaves nothing behind: the registry is reloaded from the store.
    pub fn change<T>(
        &self,
        store: &Store,
        audit: &hutong_audit::Entry,
        f: impl FnOnce(&mut Registry, &dyn Candidates) -> Result<T, String>,
    ) -> Result<Result<T, String>, StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.change_locked(&mut st, store, audit, f);
        self.publish(&mut st);
        r
    }

    fn change_locked<T>(
        &self,
        st: &mut State,
        store: &Store,
        audit: &hutong_audit::Entry,
        f: impl FnOnce(&mut Registry, &dyn Candidates) -> Result<T, String>,
    ) -> Result<Result<T, String>, StoreError> {
        sync(st, store)?;
        let State {
            index, registry, ..
        } = &mut *st;
        let (Some(index), Some(reg)) = (index.as_ref(), registry.as_mut()) else {
            return Ok(Err("the person registry is not available".into()));
        };
        let out = f(reg, index.candidates());
        if let Some(e) = index.take_error().or_else(|| reg.take_error()) {
            reg.discard_pending();
            st.registry = None;
            return Err(e);
        }
        if out.is_err() {
            reg.discard_pending();
            st.registry = None;
            return Ok(out);
        }
        if let Err(e) = reg.flush(store, audit) {
            st.registry = None;
            return Err(e);
        }
        reg.evict();
        Ok(out)
    }

    /// The Patients of a person (`Patient/{id}`), caught up.
    pub fn patients_of(&self, store: &Store, person: &str) -> Result<Vec<String>, StoreError> {
        self.view_of(store, &[person], &[], |reg| reg.patients(person))
    }

    /// The person of a Patient (`Patient/{id}`), caught up.
    /// For each of `patients` (ids, without `Patient/`), its person and that person's
    /// Patients' ids — one catch-up with the store for them all, where a call per patient
    /// would catch up each time (a centre's follow-up list asks for thousands).
    pub fn people_of(
        &self,
        store: &Store,
        patients: &[String],
    ) -> Result<Vec<Option<PersonPatients>>, StoreError> {
        let refs: Vec<String> = patients.iter().map(|p| format!("Patient/{p}")).collect();
        let r: Vec<&str> = refs.iter().map(String::as_str).collect();
        let persons: Vec<Option<String>> = self.view_of(store, &[], &r, |reg| {
            r.iter()
                .map(|p| reg.person_of(p).map(String::from))
                .collect()
        })?;
        let wanted: Vec<&str> = persons.iter().flatten().map(String::as_str).collect();
        self.view_of(store, &wanted, &[], |reg| {
            persons
                .iter()
                .map(|p| {
                    p.as_ref().map(|p| {
                        let ids = reg
                            .patients(p)
                            .into_iter()
                            .map(|x| x.trim_start_matches("Patient/").to_string())
                            .collect();
                        (p.clone(), ids)
                    })
                })
                .collect()
        })
    }

    pub fn person_of(&self, store: &Store, patient: &str) -> Result<Option<String>, StoreError> {
        self.view_of(store, &[], &[patient], |reg| {
            reg.person_of(patient).map(String::from)
        })
    }

    /// Reads the caught-up registry after reading in `persons` and the persons of `patients`
    /// (a lazy registry holds only what it was asked about).
    pub fn view_of<T>(
        &self,
        store: &Store,
        persons: &[&str],
        patients: &[&str],
        f: impl FnOnce(&Registry) -> T,
    ) -> Result<T, StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        sync(&mut st, store)?;
        self.publish(&mut st);
        let reg = st.registry.as_mut().expect("built by sync");
        reg.page_persons(persons);
        reg.page_patients(patients);
        if let Some(e) = reg.take_error() {
            return Err(e);
        }
        Ok(f(reg))
    }

    /// Sets the source trust ranks used for the golden record.
    pub fn set_trust(&self, trust: std::collections::HashMap<String, i32>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = st.registry.as_mut() {
            r.trust = trust.clone();
        }
        st.trust = trust;
    }

    /// Sets the decision thresholds (log2 posterior odds): at or above `link` a new Patient
    /// joins the matched person, at or above `review` the pair is queued for review.
    pub fn set_thresholds(&self, t: hutong_mpi::Thresholds) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = st.index.as_mut() {
            index.set_thresholds(t);
        }
        if let Some(r) = st.registry.as_mut() {
            r.margin = crate::persons::Margin(t.margin);
        }
        st.thresholds = t;
    }

    /// Chooses where the index lives (before first use; by default by the backend).
    pub fn set_index_kind(&self, kind: IndexKind) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.kind != Some(kind) {
            st.kind = Some(kind);
            st.index = None;
            st.registry = None;
        }
    }

    /// How many Patients are indexed (after catching up).
    pub fn indexed(&self, store: &Store) -> Result<usize, StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        sync(&mut st, store)?;
        self.publish(&mut st);
        Ok(st.index.as_ref().map_or(0, Idx::len))
    }
}

/// Builds the index on first use: in memory from every Patient; in the database from what
/// it already holds, or from every Patient when it was never built. Returns the Patients to
/// give persons to.
fn open_index(st: &mut State, store: &Store) -> Result<Vec<(String, bool)>, StoreError> {
    let kind = *st
        .kind
        .get_or_insert_with(|| IndexKind::default_for(store.dialect()));
    let mut changed = Vec::new();
    let mut newest = i64::MIN;
    let idx = match kind {
        IndexKind::Memory => {
            let mut index = Index::new(Model::starting());
            for_each_patient(store, |s| {
                newest = newest.max(s.last_updated);
                if let Some(r) = record_of(s) {
                    let id = format!("Patient/{}", s.id);
                    index.upsert(&id, s.version, r);
                    changed.push((id, false));
                }
                Ok(())
            })?;
            st.trained_at = 0;
            Idx::Memory(index)
        }
        IndexKind::Database => {
            let mut index = StoredIndex::open(store, st.thresholds)?;
            match index.mark("synced")? {
                Some(t) => newest = t,
                None => {
                    let mut page: Vec<Put> = Vec::new();
                    for_each_patient(store, |s| {
                        newest = newest.max(s.last_updated);
                        if let Some(record) = record_of(s) {
                            let id = format!("Patient/{}", s.id);
                            changed.push((id.clone(), false));
                            page.push(Put {
                                id,
                                version: s.version,
                                record,
                            });
                        }
                        if page.len() >= BUILD_PAGE {
                            index.apply(std::mem::take(&mut page), &[], None)?;
                        }
                        Ok(())
                    })?;
                    // The mark last: a build cut short starts again from the Patients.
                    index.apply(page, &[], Some(newest))?;
                    if !changed.is_empty() {
                        tracing::info!(
                            patients = changed.len(),
                            "Built the identity index in the database."
                        );
                    }
                }
            }
            st.trained_at = index.trained_at();
            Idx::Stored(index)
        }
    };
    st.index = Some(idx);
    st.index
        .as_mut()
        .expect("just set")
        .set_thresholds(st.thresholds);
    st.synced = newest;
    Ok(changed)
}

fn for_each_patient(
    store: &Store,
    mut f: impl FnMut(&Stored) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut after = i64::MIN;
    loop {
        let (page, last) = store.scan("Patient", None, false, after, 5_000, &Scope::All)?;
        if page.is_empty() {
            return Ok(());
        }
        for s in &page {
            f(s)?;
        }
        after = last;
    }
}

/// Re-estimates the model once the index has doubled since it was last estimated.
fn retrain(st: &mut State) -> Result<(), StoreError> {
    let Some(index) = st.index.as_mut() else {
        return Ok(());
    };
    let n = index.len();
    if n < TRAIN_AT || n < 2 * st.trained_at {
        return Ok(());
    }
    let started = std::time::Instant::now();
    match index {
        Idx::Memory(index) => {
            let records: Vec<Record> = index.records().map(|(_, r)| r.clone()).collect();
            let profile = hutong_mpi::compare::profile_of(&records);
            let candidates = block::candidates(&records, profile);
            index.set_model(Model::train(&records, &candidates, profile));
        }
        Idx::Stored(index) => {
            // Another node may have done it already.
            index.refresh()?;
            if n < 2 * index.trained_at() {
                st.trained_at = index.trained_at();
                return Ok(());
            }
            let (records, candidates) = index.training_set()?;
            let profile = hutong_mpi::compare::profile_of(&records);
            index.set_model(Model::train(&records, &candidates, profile), n)?;
        }
    }
    st.trained_at = n;
    tracing::info!(
        patients = n,
        seconds = started.elapsed().as_secs_f64(),
        "Re-estimated the matching model from the store's Patients."
    );
    Ok(())
}

fn sync(st: &mut State, store: &Store) -> Result<(), StoreError> {
    let mut changed = if st.index.is_none() {
        open_index(st, store)?
    } else {
        Vec::new()
    };
    // A database index opened as it was left catches up with what was written since.
    let index = st.index.as_mut().expect("opened above");
    changed.extend(catch_up(index, &mut st.synced, store)?);
    retrain(st)?;
    let State {
        index,
        registry,
        persons_synced,
        trust,
        synced,
        thresholds,
        ..
    } = st;
    let Some(index) = index.as_mut() else {
        return Ok(());
    };
    if registry.is_none() {
        *persons_synced = hutong_fhir::date::now_ms();
        let mut reg = match index {
            Idx::Memory(_) => Registry::load(store)?,
            Idx::Stored(_) => Registry::load_lazy(store)?,
        };
        reg.trust = trust.clone();
        reg.margin = crate::persons::Margin(thresholds.margin);
        *registry = Some(reg);
        // Every Patient is looked at again: whatever changed while the registry was away.
        // A database index says up to when that was done; the rest were placed before.
        changed = match index {
            Idx::Memory(index) => index
                .records()
                .map(|(id, _)| (id.to_string(), false))
                .collect(),
            Idx::Stored(s) => {
                let since = s
                    .mark("linked")?
                    .unwrap_or(i64::MIN)
                    .saturating_sub(OVERLAP_MS);
                let mut seen = std::collections::HashSet::new();
                let mut v: Vec<(String, bool)> = changed
                    .into_iter()
                    .filter(|(id, _)| seen.insert(id.clone()))
                    .collect();
                for k in store.changes_since("Patient", since)? {
                    let id = format!("Patient/{}", k.id);
                    if seen.insert(id.clone()) {
                        v.push((id, false));
                    }
                }
                v
            }
        };
    }
    let reg = registry.as_mut().expect("loaded above");
    let result = link_changed(reg, index, store, persons_synced, &changed);
    match (&result, &*index) {
        (Err(_), _) => *registry = None,
        (Ok(()), Idx::Stored(s)) if !changed.is_empty() => s.set_mark("linked", *synced)?,
        _ => {}
    }
    result
}

fn link_changed(
    reg: &mut Registry,
    index: &Idx,
    store: &Store,
    persons_synced: &mut i64,
    changed: &[(String, bool)],
) -> Result<(), StoreError> {
    crate::persons::catch_up(reg, store, persons_synced)?;
    let started = std::time::Instant::now();
    let audit = linker_entry();
    for (id, deleted) in changed {
        if *deleted {
            reg.remove(id);
        } else {
            reg.assign(index.candidates(), id);
        }
        if let Some(e) = index.take_error().or_else(|| reg.take_error()) {
            reg.discard_pending();
            return Err(e);
        }
        reg.maybe_flush(store, &audit)?;
        reg.evict();
    }
    reg.flush(store, &audit)?;
    reg.evict();
    if changed.len() > 1_000 {
        tracing::info!(
            patients = changed.len(),
            seconds = started.elapsed().as_secs_f64(),
            "Linked Patients to persons."
        );
    }
    Ok(())
}

/// Applies the Patient versions written since the last sync: for each Patient its latest
/// (so a deletion after an update wins, and a re-creation after a deletion). Returns the
/// Patients that changed (and whether deleted).
fn catch_up(
    index: &mut Idx,
    synced: &mut i64,
    store: &Store,
) -> Result<Vec<(String, bool)>, StoreError> {
    // Versions alone first; only those the index has not seen are read.
    let since = synced.saturating_sub(OVERLAP_MS);
    let keys = store.changes_since("Patient", since)?;
    let newest = keys.iter().map(|k| k.last_updated).fold(*synced, i64::max);
    let mut latest: HashMap<&str, &hutong_store::VersionKey> = HashMap::new();
    for k in &keys {
        latest.insert(k.id.as_str(), k);
    }
    let mut latest: Vec<&hutong_store::VersionKey> = latest.into_values().collect();
    latest.sort_by_key(|k| (k.last_updated, k.version));
    let ids: Vec<String> = latest.iter().map(|k| format!("Patient/{}", k.id)).collect();
    let known: HashMap<String, i64> = match index {
        Idx::Memory(i) => ids
            .iter()
            .filter_map(|id| i.version(id).map(|v| (id.clone(), v)))
            .collect(),
        Idx::Stored(s) => {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            s.versions(&refs)?
        }
    };
    let (mut changed, mut puts, mut removes) = (Vec::new(), Vec::new(), Vec::new());
    for (k, id) in latest.into_iter().zip(ids) {
        if known.get(&id).is_some_and(|&v| v >= k.version) {
            continue;
        }
        if k.deleted {
            if known.contains_key(&id) {
                removes.push(id.clone());
                changed.push((id, true));
            }
        } else if let Some(s) = store
            .vread("Patient", &k.id, k.version, &Scope::All)?
            .found()
        {
            if let Some(record) = record_of(&s) {
                changed.push((id.clone(), false));
                puts.push(Put {
                    id,
                    version: s.version,
                    record,
                });
            }
        }
    }
    match index {
        Idx::Memory(i) => {
            for id in &removes {
                i.remove(id);
            }
            for p in puts {
                i.upsert(&p.id, p.version, p.record);
            }
        }
        Idx::Stored(s) => {
            if !puts.is_empty() || !removes.is_empty() || newest > *synced {
                s.apply(puts, &removes, Some(newest))?;
            }
        }
    }
    *synced = newest;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hutong_store::testing::{self, AUDIT};
    use serde_json::json;

    fn patient(name: &str, id_number: &str, phone: &str) -> serde_json::Value {
        json!({"resourceType": "Patient", "name": [{"text": name}], "gender": "female",
            "birthDate": "1990-04-08", "telecom": [{"system": "phone", "value": phone}],
            "identifier": [{"system": hutong_mpi::fhir::ID_SYSTEM, "value": id_number}]})
    }

    fn put(store: &Store, id: &str, v: serde_json::Value) {
        store
            .write(&AUDIT, |tx| tx.update("Patient", id, v.clone(), None))
            .unwrap();
    }

    fn found(m: &Matcher, store: &Store, p: &serde_json::Value) -> Vec<String> {
        m.matches(store, p, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect()
    }

    /// The database index is opened as it was left and catches up with what was written
    /// while no matcher ran.
    #[test]
    fn a_database_index_is_kept_across_restarts_and_catches_up() {
        let mut stores = vec![testing::sqlite()];
        stores.extend(testing::postgres());
        for t in stores {
            let store = &t.store;
            let id = hutong_cn::idcard::make(330106, 1990, 4, 8, 22);
            let other = hutong_cn::idcard::make(330106, 1990, 4, 8, 35);
            let mut a = patient("欧阳雪", &id, "13800000001");
            a["id"] = json!("a");
            put(store, "a", a.clone());
            put(store, "b", patient("歐陽雪", &id, "13800000002"));
            put(store, "c", patient("欧阳雪", &id, "13800000003"));
            let m = Matcher::default();
            m.set_index_kind(IndexKind::Database);
            assert_eq!(m.indexed(store).unwrap(), 3);
            assert_eq!(found(&m, store, &a), ["Patient/b", "Patient/c"]);
            let person = |m: &Matcher, p: &str| m.person_of(store, p).unwrap();
            let pa = person(&m, "Patient/a");
            assert!(pa.is_some());
            assert_eq!(person(&m, "Patient/b"), pa);
            drop(m);

            // Written while no matcher runs: c deleted, b now someone else, d new.
            store
                .write(&AUDIT, |tx| tx.delete("Patient", "c", None))
                .unwrap();
            put(store, "b", patient("欧阳雪", &other, "13800000002"));
            put(store, "d", patient("欧阳雪", &id, "13800000004"));
            let m = Matcher::default();
            m.set_index_kind(IndexKind::Database);
            assert_eq!(found(&m, store, &a), ["Patient/d"]);
            assert_eq!(person(&m, "Patient/d"), pa, "d joins a's person");
            // Between decisions the node holds no person; the access decision's directory
            // reads a person's links from the store.
            assert_eq!(m.view_of(store, &[], &[], |r| r.held()).unwrap(), 0);
            let pa = pa.unwrap();
            let (dir, _) = m.directory();
            let mut linked = hutong_access::Directory::patients_of(&dir, &pa);
            linked.sort();
            assert_eq!(linked, ["a", "b", "d"]);
            drop(dir);
            let mut d = patient("欧阳雪", &id, "13800000004");
            d["id"] = json!("d");
            assert_eq!(
                found(&m, store, &d),
                ["Patient/a"],
                "b's new ID number is another person's"
            );
        }
    }
}

//! Patient matching against the live store (`Patient/$match`): an in-memory index of every
//! current Patient, built on first use and caught up from the Patient history before each
//! match, so every write path (REST, transactions, bulk import, another process) is seen
//! without hooks. The model is re-estimated by EM from the store's own Patients as they
//! grow; until there are enough, starting values are used.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use hutong_mpi::index::{Index, Match};
use hutong_mpi::{block, fhir::raw_from_patient, Model};
use hutong_store::{Scope, Store, StoreError, Stored};

use crate::persons::Registry;

/// Patients needed before EM is trusted over the starting values.
const TRAIN_AT: usize = 1_000;
/// Writes may commit a little after the time they were stamped: re-read this much history.
const OVERLAP_MS: i64 = 5_000;

#[derive(Default)]
struct State {
    index: Option<Index>,
    synced: i64,
    trained_at: usize,
    registry: Option<Registry>,
    persons_synced: i64,
    trust: std::collections::HashMap<String, i32>,
    thresholds: hutong_mpi::Thresholds,
}

/// Which Patients make up each person, as the access decision reads it: a copy of the
/// registry's links, updated whenever they change, readable without waiting for linking.
#[derive(Default)]
pub struct Links {
    patients: HashMap<String, Vec<String>>,
    generation: u64,
}

/// A read view of [`Links`].
pub struct LinkView<'a>(RwLockReadGuard<'a, Links>);

impl hutong_access::Directory for LinkView<'_> {
    fn patients_of(&self, person: &str) -> Vec<String> {
        self.0.patients.get(person).cloned().unwrap_or_default()
    }
}

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
        Ok(index
            .matches(&record, limit + 1)
            .into_iter()
            .filter(|m| Some(&m.id) != self_id.as_ref())
            .take(limit)
            .collect())
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
        f: impl FnOnce(&mut Registry, &Index) -> Result<T, String>,
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
        f: impl FnOnce(&mut Registry, &Index) -> Result<T, String>,
    ) -> Result<Result<T, String>, StoreError> {
        sync(st, store)?;
        let State {
            index, registry, ..
        } = &mut *st;
        let (Some(index), Some(reg)) = (index.as_ref(), registry.as_mut()) else {
            return Ok(Err("the person registry is not available".into()));
        };
        let out = f(reg, index);
        if out.is_err() {
            reg.discard_pending();
            st.registry = None;
            return Ok(out);
        }
        if let Err(e) = reg.flush(store, audit) {
            st.registry = None;
            return Err(e);
        }
        Ok(out)
    }

    /// Reads the caught-up registry.
    pub fn view<T>(&self, store: &Store, f: impl FnOnce(&Registry) -> T) -> Result<T, StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        sync(&mut st, store)?;
        self.publish(&mut st);
        Ok(f(st.registry.as_ref().expect("built by sync")))
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
            index.certain = t.link;
            index.probable = t.review;
        }
        st.thresholds = t;
    }

    /// How many Patients are indexed (after catching up).
    pub fn indexed(&self, store: &Store) -> Result<usize, StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        sync(&mut st, store)?;
        self.publish(&mut st);
        Ok(st.index.as_ref().map_or(0, Index::len))
    }
}

fn sync(st: &mut State, store: &Store) -> Result<(), StoreError> {
    let mut changed: Vec<(String, bool)> = Vec::new();
    if let Some(index) = st.index.as_mut() {
        changed = catch_up(index, &mut st.synced, store)?;
    } else {
        let mut index = Index::new(Model::starting());
        index.certain = st.thresholds.link;
        index.probable = st.thresholds.review;
        let mut after = i64::MIN;
        let mut newest = i64::MIN;
        loop {
            let (page, last) = store.scan("Patient", None, false, after, 5_000, &Scope::All)?;
            if page.is_empty() {
                break;
            }
            for s in &page {
                newest = newest.max(s.last_updated);
                if let Some(r) = record_of(s) {
                    let id = format!("Patient/{}", s.id);
                    index.upsert(&id, s.version, r);
                    changed.push((id, false));
                }
            }
            after = last;
        }
        st.index = Some(index);
        st.synced = newest;
    }
    let State {
        index,
        trained_at,
        registry,
        persons_synced,
        trust,
        ..
    } = st;
    let Some(index) = index.as_mut() else {
        return Ok(());
    };
    if index.len() >= TRAIN_AT && index.len() >= 2 * *trained_at {
        let records: Vec<hutong_mpi::Record> = index.records().map(|(_, r)| r.clone()).collect();
        let profile = hutong_mpi::compare::profile_of(&records);
        let candidates = block::candidates(&records, profile);
        index.set_model(Model::train(&records, &candidates, profile));
        *trained_at = index.len();
        tracing::info!(
            patients = index.len(),
            "Re-estimated the matching model from the store's Patients."
        );
    }
    if registry.is_none() {
        *persons_synced = hutong_fhir::date::now_ms();
        let mut reg = Registry::load(store)?;
        reg.trust = trust.clone();
        *registry = Some(reg);
        // Every Patient is looked at again: whatever changed while the registry was away.
        changed = index
            .records()
            .map(|(id, _)| (id.to_string(), false))
            .collect();
    }
    let reg = registry.as_mut().expect("loaded above");
    let result = link_changed(reg, index, store, persons_synced, &changed);
    if result.is_err() {
        *registry = None;
    }
    result
}

fn link_changed(
    reg: &mut Registry,
    index: &Index,
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
            reg.assign(index, id);
        }
        reg.maybe_flush(store, &audit)?;
    }
    reg.flush(store, &audit)?;
    if changed.len() > 1_000 {
        tracing::info!(
            patients = changed.len(),
            seconds = started.elapsed().as_secs_f64(),
            "Linked Patients to persons."
        );
    }
    Ok(())
}

/// Applies the Patient versions written since the last sync, oldest first, so that a
/// deletion after an update wins. Returns the Patients that changed (and whether deleted).
fn catch_up(
    index: &mut Index,
    synced: &mut i64,
    store: &Store,
) -> Result<Vec<(String, bool)>, StoreError> {
    let mut changed = Vec::new();
    // Versions alone first; only those the index has not seen are read.
    let since = synced.saturating_sub(OVERLAP_MS);
    for k in store.changes_since("Patient", since)? {
        *synced = (*synced).max(k.last_updated);
        let id = format!("Patient/{}", k.id);
        if index.version(&id).is_some_and(|v| v >= k.version) {
            continue;
        }
        if k.deleted {
            index.remove(&id);
            changed.push((id, true));
        } else if let Some(s) = store
            .vread("Patient", &k.id, k.version, &Scope::All)?
            .found()
        {
            if let Some(r) = record_of(&s) {
                index.upsert(&id, s.version, r);
                changed.push((id, false));
            }
        }
    }
    Ok(changed)
}

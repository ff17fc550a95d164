//! The audit trail (信息审计跟踪, 防篡改): an entry for every access and change — who, on
//! behalf of whom, what, why, when, from where, with what outcome — appended to the store's
//! hash-chained log, pinned by signed checkpoints, verifiable end to end, and shown as FHIR
//! `AuditEvent` (IHE BALP shape) to auditors and, about their own record, to residents.
//!
//! Layout:
//! - [`Entry`]: what an entry records; [`Entry::hook`] makes it the audit entry of a write
//!   transaction (appended before commit).
//! - [`Sink`]: appends access entries in batches from a background thread.
//! - [`checkpoint`]: signs each partition's head.
//! - [`verify`]: walks every chain and names the first entry altered, inserted or deleted.
//! - [`event`]: the AuditEvent view.

pub mod checkpoint;
pub mod event;
pub mod verify;

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hutong_store::{AuditEntry, AuditHook, Change, Store};
use serde::{Deserialize, Serialize};

/// Who acted, as the entry records them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Who {
    /// `system`, `clinician`, `resident`, `operator`, `platform`, or `anonymous`.
    pub kind: String,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub institution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// One audit entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// When (ms since the epoch).
    pub ts: i64,
    /// What kind of act: `read`, `search`, `create`, `update`, `delete`, `transaction`,
    /// `login`, `grant`, `break-glass`, …
    pub action: String,
    /// The HTTP status (or 200/4xx equivalents for the command line).
    pub outcome: u16,
    pub who: Who,
    /// The person whose record a resident or proxy acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// Purpose of use (`TREAT`, `ETREAT`, `PWATRNY`, `HOPERAT`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The reason given (break-glass, an operator's recorded reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// The client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The request: method, path and query.
    pub request: String,
    /// Resources read or written (`Type/id/_history/n`), or persons acted on (`Person/id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<String>,
    /// Why it was refused, or what else is worth knowing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Patient shards the entry is about (indexed, not part of the JSON).
    #[serde(skip)]
    pub subjects: Vec<i64>,
    /// Entities touched past the first [`MAX_ENTITIES`]: counted, never named.
    #[serde(skip)]
    pub unlisted: usize,
}

/// Entities listed in one entry at most. A larger read (a search, `$everything`) is recorded
/// as BALP records queries: the request, how many resources it returned, the first of them,
/// and — always, whatever the count — every Patient it concerned.
pub const MAX_ENTITIES: usize = 100;

impl Entry {
    /// Records an entity read or acted on. Past [`MAX_ENTITIES`] it is only counted, so a
    /// large read does not name thousands of resources the stored entry leaves out.
    pub fn add_entity(&mut self, name: impl FnOnce() -> String) {
        if self.entities.len() < MAX_ENTITIES {
            self.entities.push(name());
        } else {
            self.unlisted += 1;
        }
    }

    /// Entities read or acted on, listed or not.
    pub fn entity_count(&self) -> usize {
        self.entities.len() + self.unlisted
    }

    /// The store's form of the entry.
    pub fn to_store(&self) -> AuditEntry {
        let mut subjects: Vec<i64> = self.subjects.iter().copied().filter(|s| *s != 0).collect();
        subjects.sort_unstable();
        subjects.dedup();
        let entry = if self.entity_count() > MAX_ENTITIES {
            let mut e = Entry {
                entities: self.entities[..MAX_ENTITIES.min(self.entities.len())].to_vec(),
                detail: Some(format!(
                    "{}{} resources; the first {MAX_ENTITIES} are listed",
                    self.detail
                        .as_ref()
                        .map(|d| format!("{d}; "))
                        .unwrap_or_default(),
                    self.entity_count()
                )),
                ..Entry::default()
            };
            e.ts = self.ts;
            e.action.clone_from(&self.action);
            e.outcome = self.outcome;
            e.who = self.who.clone();
            e.on_behalf_of.clone_from(&self.on_behalf_of);
            e.purpose.clone_from(&self.purpose);
            e.reason.clone_from(&self.reason);
            e.break_glass = self.break_glass;
            e.from.clone_from(&self.from);
            e.request.clone_from(&self.request);
            serde_json::to_string(&e)
        } else {
            serde_json::to_string(self)
        };
        AuditEntry {
            ts: self.ts,
            entry: entry.expect("an entry serialises"),
            subjects,
        }
    }

    /// Parses a stored entry.
    pub fn parse(json: &str) -> Option<Entry> {
        serde_json::from_str(json).ok()
    }

    /// The entry of a write transaction: this entry plus every version written.
    pub fn hook(&self) -> WriteHook<'_> {
        WriteHook(self)
    }
}

/// An entry as the audit hook of a write transaction.
pub struct WriteHook<'a>(&'a Entry);

impl AuditHook for WriteHook<'_> {
    fn entry(&self, changes: &[Change]) -> AuditEntry {
        let mut e = self.0.clone();
        e.ts = hutong_fhir::date::now_ms();
        e.entities.extend(
            changes
                .iter()
                .map(|c| format!("{}/{}/_history/{}", c.rtype, c.id, c.version)),
        );
        e.subjects.extend(changes.iter().map(|c| c.shard));
        e.to_store()
    }
}

struct Pending {
    queued: u64,
    written: u64,
    failed: Option<String>,
}

/// Appends access entries in batches: requests hand their entry over and go on; a
/// background thread writes whatever has gathered in one transaction, within milliseconds.
/// The queue is bounded, so a stalled database slows requests down rather than losing
/// entries; [`Sink::flush`] waits until everything handed over is written (shutdown, tests).
pub struct Sink {
    tx: mpsc::SyncSender<Entry>,
    state: Arc<(Mutex<Pending>, Condvar)>,
}

const QUEUE: usize = 100_000;
/// How long the writer gathers entries before writing them.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

impl Sink {
    pub fn start(store: Store) -> Sink {
        let (tx, rx) = mpsc::sync_channel::<Entry>(QUEUE);
        let state = Arc::new((
            Mutex::new(Pending {
                queued: 0,
                written: 0,
                failed: None,
            }),
            Condvar::new(),
        ));
        let st = state.clone();
        std::thread::Builder::new()
            .name("hutong-audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Entries that arrive within a few milliseconds share a transaction: one
                    // commit for many reads instead of one each.
                    let mut batch = vec![first];
                    let until = std::time::Instant::now() + BATCH_WINDOW;
                    while batch.len() < 5_000 {
                        let left = until.saturating_duration_since(std::time::Instant::now());
                        match rx.recv_timeout(left) {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    let rows: Vec<AuditEntry> = batch.iter().map(Entry::to_store).collect();
                    // A failed batch is retried until it is written: entries are not dropped.
                    let mut delay = 10;
                    loop {
                        match store.append_audit(&rows) {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::error!(error = %e, entries = rows.len(), "Writing audit entries failed; retrying.");
                                st.0.lock().unwrap_or_else(|p| p.into_inner()).failed =
                                    Some(e.to_string());
                                std::thread::sleep(Duration::from_millis(delay));
                                delay = (delay * 2).min(2_000);
                            }
                        }
                    }
                    let (m, cv) = &*st;
                    let mut p = m.lock().unwrap_or_else(|e| e.into_inner());
                    p.written += rows.len() as u64;
                    p.failed = None;
                    cv.notify_all();
                }
            })
            .expect("spawn the audit writer");
        Sink { tx, state }
    }

    /// Hands an entry over to be written.
    pub fn record(&self, e: Entry) {
        self.state
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queued += 1;
        if self.tx.send(e).is_err() {
            tracing::error!("The audit writer has stopped; an entry could not be recorded.");
        }
    }

    /// Waits until every entry handed over so far is written (or `timeout` passes).
    pub fn flush(&self, timeout: Duration) -> bool {
        let (m, cv) = &*self.state;
        let mut p = m.lock().unwrap_or_else(|e| e.into_inner());
        let target = p.queued;
        let deadline = std::time::Instant::now() + timeout;
        while p.written < target {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            p = cv
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Entries handed over but not yet written, and the last write error if writing is
    /// failing.
    pub fn backlog(&self) -> (u64, Option<String>) {
        let p = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        (p.queued - p.written, p.failed.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_cap_entities() {
        let mut e = Entry {
            ts: 5,
            action: "search".into(),
            outcome: 200,
            request: "GET Observation?code=x".into(),
            entities: (0..MAX_ENTITIES + 3)
                .map(|i| format!("Observation/{i}"))
                .collect(),
            subjects: vec![3, 0, 3, 1],
            ..Default::default()
        };
        let s = e.to_store();
        assert_eq!(s.subjects, [1, 3]);
        let back = Entry::parse(&s.entry).unwrap();
        assert_eq!(back.entities.len(), MAX_ENTITIES);
        assert!(back
            .detail
            .unwrap()
            .contains(&format!("{}", MAX_ENTITIES + 3)));
        e.entities.clear();
        e.subjects.clear();
        assert_eq!(Entry::parse(&e.to_store().entry).unwrap(), e);
    }

    #[test]
    fn entities_past_the_cap_are_counted_not_named() {
        let mut e = Entry::default();
        let mut named = 0;
        for i in 0..MAX_ENTITIES + 900 {
            e.add_entity(|| {
                named += 1;
                format!("Observation/{i}/_history/1")
            });
        }
        assert_eq!(named, MAX_ENTITIES);
        assert_eq!(e.entity_count(), MAX_ENTITIES + 900);
        let back = Entry::parse(&e.to_store().entry).unwrap();
        assert_eq!(back.entities.len(), MAX_ENTITIES);
        assert_eq!(back.entities[0], "Observation/0/_history/1");
        assert!(back
            .detail
            .unwrap()
            .starts_with(&format!("{} resources", MAX_ENTITIES + 900)));
    }
}

//! An incremental index for matching one incoming record against everything indexed: the
//! same blocking keys, comparators and model as batch linkage, over compact structures
//! (hashed keys → slots), so a single match touches only its candidate blocks.

use std::collections::HashMap;

use crate::block::{hashed_keys, MAX_BLOCK};
use crate::compare::{compare_with, known_apart};
use crate::model::Model;
use crate::normalize::Record;

/// How sure a match is, as FHIR's `match-grade` extension says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grade {
    Certain,
    Probable,
    Possible,
}

impl Grade {
    pub fn as_str(self) -> &'static str {
        match self {
            Grade::Certain => "certain",
            Grade::Probable => "probable",
            Grade::Possible => "possible",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Match {
    pub id: String,
    /// log2 posterior odds.
    pub odds: f64,
    /// Posterior probability of being the same person.
    pub probability: f64,
    pub grade: Grade,
}

struct Entry {
    id: String,
    version: i64,
    record: Record,
    keys: Vec<i64>,
}

pub struct Index {
    model: Model,
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    slot_of: HashMap<String, u32>,
    blocks: HashMap<i64, Vec<u32>>,
    /// log2 posterior odds for `certain` and `probable`.
    pub certain: f64,
    pub probable: f64,
    /// People in the region ([`crate::Thresholds::population`]).
    pub population: f64,
}

impl Index {
    pub fn new(model: Model) -> Index {
        let t = crate::Thresholds::default();
        Index {
            model,
            entries: Vec::new(),
            free: Vec::new(),
            slot_of: HashMap::new(),
            blocks: HashMap::new(),
            certain: t.link,
            probable: t.review,
            population: t.population,
        }
    }

    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Replaces the model (after retraining); re-indexes if it compares on other fields.
    pub fn set_model(&mut self, model: Model) {
        let reindex = model.profile != self.model.profile;
        self.model = model;
        if reindex {
            self.blocks.clear();
            for (slot, e) in self.entries.iter_mut().enumerate() {
                if let Some(e) = e {
                    e.keys = hashed_keys(&e.record, self.model.profile);
                    for k in &e.keys {
                        self.blocks.entry(*k).or_default().push(slot as u32);
                    }
                }
            }
        }
    }

    /// The version indexed for `id`, if any.
    pub fn version(&self, id: &str) -> Option<i64> {
        let slot = *self.slot_of.get(id)?;
        self.entries[slot as usize].as_ref().map(|e| e.version)
    }

    /// Adds or replaces a record (older versions than the indexed one are ignored).
    pub fn upsert(&mut self, id: &str, version: i64, record: Record) {
        if self.version(id).is_some_and(|v| v >= version) {
            return;
        }
        self.remove(id);
        let keys = hashed_keys(&record, self.model.profile);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.entries.push(None);
                (self.entries.len() - 1) as u32
            }
        };
        for k in &keys {
            self.blocks.entry(*k).or_default().push(slot);
        }
        self.entries[slot as usize] = Some(Entry {
            id: id.to_string(),
            version,
            record,
            keys,
        });
        self.slot_of.insert(id.to_string(), slot);
    }

    pub fn remove(&mut self, id: &str) {
        let Some(slot) = self.slot_of.remove(id) else {
            return;
        };
        if let Some(e) = self.entries[slot as usize].take() {
            for k in e.keys {
                if let Some(v) = self.blocks.get_mut(&k) {
                    v.retain(|s| *s != slot);
                    if v.is_empty() {
                        self.blocks.remove(&k);
                    }
                }
            }
        }
        self.free.push(slot);
    }

    /// The record indexed for `id`.
    pub fn get(&self, id: &str) -> Option<&Record> {
        let slot = *self.slot_of.get(id)?;
        self.entries[slot as usize].as_ref().map(|e| &e.record)
    }

    /// Every indexed record with its id, for retraining.
    pub fn records(&self) -> impl Iterator<Item = (&str, &Record)> {
        self.entries
            .iter()
            .flatten()
            .map(|e| (e.id.as_str(), &e.record))
    }

    /// Indexed records that could be the same person as `record`, best first, down to
    /// `possible` (the review threshold minus a margin), at most `limit`.
    pub fn matches(&self, record: &Record, limit: usize) -> Vec<Match> {
        let mut slots: Vec<u32> = Vec::new();
        for k in hashed_keys(record, self.model.profile) {
            if let Some(v) = self.blocks.get(&k) {
                if v.len() <= MAX_BLOCK {
                    slots.extend_from_slice(v);
                }
            }
        }
        slots.sort_unstable();
        slots.dedup();
        let candidates = slots
            .into_iter()
            .filter_map(|s| self.entries[s as usize].as_ref())
            .map(|e| (e.id.as_str(), &e.record));
        rank(
            &self.model,
            (self.certain, self.probable, self.population),
            record,
            candidates,
            self.model.name_count(record),
            limit,
        )
    }
}

/// Weighs each candidate against `record` and keeps those down to `possible` (the review
/// threshold minus a margin), best first, at most `limit`: the decision every index makes
/// the same way, wherever its candidates come from. `thresholds` are (certain, probable) in
/// log2 posterior odds; `name_count` is how common `record`'s name is (records, of how many).
pub fn rank<'a>(
    model: &Model,
    (certain, probable, population): (f64, f64, f64),
    record: &Record,
    candidates: impl Iterator<Item = (&'a str, &'a Record)>,
    name_count: Option<(f64, f64)>,
    limit: usize,
) -> Vec<Match> {
    let mut out: Vec<Match> = candidates
        .filter(|(_, r)| !known_apart(record, r))
        .filter_map(|(id, r)| {
            let pattern = compare_with(record, r, model.profile);
            let odds = model.odds(record, r, &pattern, name_count, population);
            let grade = if odds >= certain {
                Grade::Certain
            } else if odds >= probable {
                Grade::Probable
            } else if odds >= probable - 6.0 {
                Grade::Possible
            } else {
                return None;
            };
            Some(Match {
                id: id.to_string(),
                odds,
                probability: 1.0 / (1.0 + (-odds).exp2()),
                grade,
            })
        })
        .collect();
    out.sort_by(|a, b| b.odds.total_cmp(&a.odds).then_with(|| a.id.cmp(&b.id)));
    out.truncate(limit);
    out
}

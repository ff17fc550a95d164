//! The master patient index's matching core (一人一档): normalise each source record,
//! block with several keys, compare field by field, weigh the agreement with a
//! Fellegi–Sunter model learnt from the data (EM, term frequencies), and cluster
//! precision-first — merging two people's records is a patient-safety incident.

pub mod block;
pub mod cluster;
pub mod compare;
pub mod eval;
pub mod fhir;
pub mod index;
pub mod model;
pub mod normalize;

pub use cluster::{Clustering, ScoredPair, Thresholds};
pub use model::Model;
pub use normalize::{Raw, Record};

/// The result of linking a batch of records.
pub struct Linked {
    pub model: Model,
    pub candidates: usize,
    pub clustering: Clustering,
}

/// Deduplicates a batch: trains the model on it and clusters it, with `thresholds` or,
/// when `None`, those of the batch's profile ([`Thresholds::for_profile`]).
pub fn link(records: &[Record], thresholds: Option<Thresholds>) -> Linked {
    let profile = compare::profile_of(records);
    let thresholds = thresholds.unwrap_or_else(|| Thresholds::for_profile(profile));
    let candidates = block::candidates(records, profile);
    let model = Model::train(records, &candidates, profile);
    let scored = cluster::score_pairs(records, &model, &candidates, thresholds.population);
    let clustering = cluster::cluster(records, scored, thresholds);
    Linked {
        model,
        candidates: candidates.len(),
        clustering,
    }
}

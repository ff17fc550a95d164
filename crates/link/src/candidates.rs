//! What linking decisions read from an index, wherever it lives: the seam between the
//! decisions ([`crate::persons`]) and the two indexes ([`crate::matching`] in memory,
//! [`crate::mpi_store`] in the database).

use hutong_mpi::index::{Index, Match};
use hutong_mpi::Record;

/// What linking decisions read from the index: a Patient's normalised record and the
/// Patients that may be the same person. A database index that fails to answer answers
/// "nothing" and keeps the error (`Idx::take_error` in [`crate::matching`]); whoever decided on such an answer
/// throws the decision away.
pub trait Candidates {
    fn record(&self, patient: &str) -> Option<Record>;
    fn matches(&self, record: &Record, limit: usize) -> Vec<Match>;
}

impl Candidates for Index {
    fn record(&self, patient: &str) -> Option<Record> {
        self.get(patient).cloned()
    }
    fn matches(&self, record: &Record, limit: usize) -> Vec<Match> {
        Index::matches(self, record, limit)
    }
}

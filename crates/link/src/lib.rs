//! One person, one record on the live store: the Patient index behind `Patient/$match`
//! (in memory or in the database), the linker that gives every Patient its platform
//! `Person`, and the review queue for what it cannot decide. The matching core itself —
//! normalisation, blocking, the Fellegi–Sunter model — is `hutong-mpi`, free of I/O; this
//! crate is where it meets the store.
//!
//! Layering: [`candidates`] at the bottom; [`persons`] (the registry and its decisions) and
//! [`mpi_store`] (the database index) read through it; [`matching`] holds both and keeps
//! them caught up with the store.

pub mod candidates;
pub mod matching;
pub mod mpi_store;
pub mod persons;

pub use candidates::Candidates;
pub use matching::{IndexKind, Matcher};

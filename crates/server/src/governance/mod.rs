//! Data governance (数据治理): the intake rules on every write path and their quarantine
//! ([`intake`], [`quality`]), work orders routed to the institution that must fix something
//! ([`orders`] as stored, [`workorders`] as operations), reconciliation against an
//! institution's own counts ([`reconcile`]), and the operator's figures ([`scorecards`],
//! [`throughput`]).
//!
//! Layering inside: `orders` and `intake` sit below the engine (the write path calls them
//! inside its transaction); the others are operations above it.

pub(crate) mod intake;
pub(crate) mod orders;
pub(crate) mod quality;
pub mod reconcile;
pub(crate) mod scorecards;
pub(crate) mod throughput;
pub(crate) mod workorders;

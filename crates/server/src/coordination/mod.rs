//! Service coordination (业务协同) on the store: the regional slot pool (号源池). The rules
//! are `hutong_coordination`'s; this module keeps the pool's index in the writer's
//! transaction and serves IHE ITI Scheduling's operations over it ([`pool`]).
//!
//! The pool's index is two tables beside the resources:
//! - `co_schedule`: each Schedule's institution, district, specialty, practitioner and
//!   service, and how many slots it has published (the ordinal the family-doctor share is
//!   decided on);
//! - `co_slot`: each pooled Slot's time, those descriptions copied for `$find`, whether it
//!   is in the reserve, and its state (free, held, booked, closed) with the Appointment that
//!   has it;
//! - `co_qualified`: which institutions' results the region recognizes ([`recognition`]);
//!   `co_recognition`: each recognition check made at order time and what came of it;
//! - `co_referral`: each referral's parties, person, consent and state ([`referral`]);
//! - `co_contract`, `co_visit`, `co_chronic`: family-doctor contracts, chronic-disease
//!   follow-up encounters and hypertension or diabetes diagnoses, from which the follow-up
//!   lists are computed ([`contracts`]).
//!
//! Architecture invariant: every write of a Slot, Schedule or Appointment — by the REST
//! API, a bundle, bulk import or the pool's own operations — passes [`index::written`]
//! (or [`index::deleted`]) in its transaction, so the index never disagrees with the resources, and a
//! slot changes hands only through `SlotState::claim`, with its row locked.

pub mod contracts;
pub(crate) mod index;
pub(crate) mod pool;
pub(crate) mod recognition;
pub(crate) mod referral;
pub mod standing;
pub(crate) mod stats;

use hutong_store::{Store, StoreError};

/// The tables, written once for both dialects ([`hutong_store::sql::Dialect::ddl`]). Not patient data: keyed
/// by the Slot and Schedule ids (reference tables on a distributed store). `$find` reads
/// the indexes alone: by time, or by specialty, district or institution and then time, each
/// carrying the columns that decide whether a slot is offered, so that counting a week's
/// free slots touches no table row.
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS co_schedule (schedule TEXT PRIMARY KEY, org TEXT NOT NULL DEFAULT '',
    district TEXT NOT NULL DEFAULT '', specialty TEXT NOT NULL DEFAULT '',
    practitioner TEXT NOT NULL DEFAULT '', service TEXT NOT NULL DEFAULT '',
    published BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS co_slot (slot TEXT PRIMARY KEY, schedule TEXT NOT NULL,
    org TEXT NOT NULL DEFAULT '', district TEXT NOT NULL DEFAULT '',
    specialty TEXT NOT NULL DEFAULT '', practitioner TEXT NOT NULL DEFAULT '',
    service TEXT NOT NULL DEFAULT '', start_ms BIGINT NOT NULL, end_ms BIGINT NOT NULL,
    ordinal BIGINT NOT NULL, reserved BIGINT NOT NULL, state TEXT NOT NULL,
    appt TEXT NOT NULL DEFAULT '', until_ms BIGINT NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS co_slot_open ON co_slot (start_ms, state, until_ms, reserved);
CREATE INDEX IF NOT EXISTS co_slot_specialty ON co_slot (specialty, start_ms, state, until_ms, reserved);
CREATE INDEX IF NOT EXISTS co_slot_district ON co_slot (district, start_ms, state, until_ms, reserved);
CREATE INDEX IF NOT EXISTS co_slot_place ON co_slot (specialty, district, start_ms, state, until_ms, reserved);
CREATE INDEX IF NOT EXISTS co_slot_org ON co_slot (org, start_ms, state, until_ms, reserved);
CREATE INDEX IF NOT EXISTS co_slot_schedule ON co_slot (schedule);
CREATE INDEX IF NOT EXISTS co_slot_appt ON co_slot (appt);
CREATE TABLE IF NOT EXISTS co_qualified (source TEXT PRIMARY KEY, org TEXT NOT NULL,
    qualified BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS co_recognition (id TEXT NOT NULL, code TEXT NOT NULL,
    at BIGINT NOT NULL, institution TEXT NOT NULL, patient TEXT NOT NULL,
    outcome TEXT NOT NULL, decision TEXT NOT NULL DEFAULT '', PRIMARY KEY (id, code));
CREATE INDEX IF NOT EXISTS co_recognition_at ON co_recognition (at);
CREATE TABLE IF NOT EXISTS co_referral (task TEXT PRIMARY KEY, request TEXT NOT NULL,
    grant_id TEXT NOT NULL, referrer TEXT NOT NULL, receiver TEXT NOT NULL,
    receiver_org TEXT NOT NULL, person TEXT NOT NULL, patient TEXT NOT NULL,
    direction TEXT NOT NULL, state TEXT NOT NULL, created BIGINT NOT NULL,
    updated BIGINT NOT NULL, due BIGINT NOT NULL, escalated BIGINT NOT NULL DEFAULT 0,
    opened BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS co_contract (episode TEXT PRIMARY KEY, patient TEXT NOT NULL,
    institution TEXT NOT NULL, org TEXT NOT NULL, team TEXT NOT NULL, package TEXT NOT NULL,
    status TEXT NOT NULL, start_ms BIGINT NOT NULL, end_ms BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS co_contract_institution ON co_contract (institution, status);
CREATE INDEX IF NOT EXISTS co_contract_patient ON co_contract (patient);
CREATE TABLE IF NOT EXISTS co_visit (encounter TEXT PRIMARY KEY, patient TEXT NOT NULL,
    at BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS co_visit_patient ON co_visit (patient, at);
CREATE TABLE IF NOT EXISTS co_chronic (condition TEXT NOT NULL, kind TEXT NOT NULL,
    patient TEXT NOT NULL, PRIMARY KEY (condition, kind));
CREATE INDEX IF NOT EXISTS co_chronic_patient ON co_chronic (patient);
CREATE TABLE IF NOT EXISTS co_push (institution TEXT NOT NULL, day BIGINT NOT NULL,
    PRIMARY KEY (institution, day));
CREATE INDEX IF NOT EXISTS co_referral_receiver ON co_referral (receiver, state, created);
CREATE INDEX IF NOT EXISTS co_referral_referrer ON co_referral (referrer, state, created);
CREATE INDEX IF NOT EXISTS co_referral_grant ON co_referral (grant_id);
CREATE INDEX IF NOT EXISTS co_referral_due ON co_referral (state, due);
";

pub fn open_tables(store: &Store) -> Result<(), StoreError> {
    store.create_tables(TABLES)
}

//! Exchange (上下贯通) on the store: FHIR subscriptions — topic-based as the Subscriptions R5
//! Backport IG defines them for R4, and classic R4 searches — delivered over rest-hook and
//! websocket. The rules (topics, reading a Subscription, notification Bundles, signatures,
//! retries) are `hutong_exchange`'s; this module keeps the subscriptions' state beside the
//! resources and moves the events:
//!
//! - [`index`]: every write of a `Subscription` (any path) is read and checked in its
//!   transaction; `ex_sub` holds its owner, its parsed form, its live status and counters.
//! - [`dispatch`]: reads the store's change log (`hutong_store::changelog`), finds which
//!   subscriptions each change concerns — by running the subscription's own search, under
//!   the subscriber's access decision, over the changed ids — and numbers the events
//!   (`ex_event`), in one transaction with the log cursor: nothing lost, nothing twice.
//! - [`deliver`]: sends what is due — handshake, events in order, heartbeats — to rest-hook
//!   endpoints (signed, retried with backoff) and bound websockets; every notification is a
//!   read by the subscriber, decided and audited as one.
//! - [`ops`]: `$status`, `$events`, `$topics`, `$get-ws-binding-token`.
//!
//! Architecture invariant: an event is numbered only in the transaction that moves the
//! consumer's cursor past the change that raised it, and a delivery moves `delivered` only
//! after the receiver acknowledged; what a subscriber receives passes the same access
//! decision (`Guard`) and audit as a search of theirs.

pub(crate) mod deliver;
pub(crate) mod dispatch;
pub(crate) mod downward;
pub(crate) mod index;
pub mod links;
pub(crate) mod ops;
pub(crate) mod regional;
pub(crate) mod upward;

use std::sync::OnceLock;

use hutong_exchange::Topics;
use hutong_store::{Store, StoreError};

pub use deliver::{Hub, LinkState};

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS ex_sub (id TEXT PRIMARY KEY, owner TEXT NOT NULL, spec TEXT NOT NULL,
    status TEXT NOT NULL, events BIGINT NOT NULL DEFAULT 0, delivered BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0, next_try BIGINT NOT NULL DEFAULT 0,
    last_sent BIGINT NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
    created BIGINT NOT NULL, updated BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS ex_event (sub TEXT NOT NULL, num BIGINT NOT NULL, ts BIGINT NOT NULL,
    rtype TEXT NOT NULL, rid TEXT NOT NULL, version BIGINT NOT NULL, deleted BIGINT NOT NULL,
    PRIMARY KEY (sub, num));
";

/// The name the subscriptions' dispatcher reads the change log under.
pub const CONSUMER: &str = "subscriptions";

/// The name a node's forwarder to its upstream reads the change log under.
pub const UPSTREAM_CONSUMER: &str = "upstream";

/// The store's `meta` key saying whether what a node held when it joined its upstream has
/// been sent ([`PENDING`] until it has).
pub(crate) const BACKFILL_KEY: &str = "node-backfill";
pub(crate) const PENDING: &str = "pending";

pub fn open_tables(store: &Store) -> Result<(), StoreError> {
    store.create_tables(TABLES)?;
    // Registering the consumer now means changes written from here on wait for it, even
    // before the first subscription exists or the server has started.
    store.change_cursor(CONSUMER)?;
    Ok(())
}

/// How long a delivered event stays for `$events` (a receiver's missed notifications are
/// kept until delivered, however long that takes).
pub const EVENT_RETENTION_MS: i64 = 7 * 86_400_000;

/// Deletes events delivered and older than [`EVENT_RETENTION_MS`] at `now`. Returns how many.
pub fn prune_events(store: &Store, now: i64) -> Result<u64, StoreError> {
    store.exec_admin(
        "DELETE FROM ex_event WHERE ts < ? AND num <= \
         (SELECT delivered FROM ex_sub WHERE ex_sub.id = ex_event.sub)",
        &[hutong_store::sql::Val::Int(now - EVENT_RETENTION_MS)],
    )
}

/// The topics offered.
pub fn topics() -> &'static Topics {
    static T: OnceLock<Topics> = OnceLock::new();
    T.get_or_init(Topics::builtin)
}

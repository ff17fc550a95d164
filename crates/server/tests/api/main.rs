//! The HTTP integration suite: one test binary, a real server on a free port per test.

mod helpers;

mod access;
mod access_property;
mod bundles;
mod contracts;
mod crud;
mod errors;
mod governance;
mod matching;
mod nodes;
mod persons;
mod pool;
mod probe;
mod recognition;
mod referral;
mod search;
mod subscriptions;
mod workorders;

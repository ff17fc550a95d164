//! Authorized access for Hutong: who is asking, what the resident authorized, and what
//! that lets them see.
//!
//! Layout:
//! - [`principal`]: principals (institution systems, clinicians, residents, operators, the
//!   platform) and SMART scopes.
//! - [`keys`]: the keyring (token and checkpoint signing keys, data keys, the index key).
//! - [`token`]: signed access tokens.
//! - [`accounts`]: clients, users, one-time codes, lockout, the message gateway.
//! - [`grants`]: residents' grants as FHIR `Consent`, indexed.
//! - [`decision`]: the access decision — a store scope, a masking view, write permission.
//! - [`mask`]: masking of identity data.
//! - [`classify`]: sensitivity labels added at intake.
//! - [`protect`]: encryption of identity data at rest and its searchable keyed hashes.
//! - [`Access`]: all of it together, as the server holds it.
//!
//! Architecture invariant: every read the server makes on behalf of someone goes through
//! [`Access::scope`]; nothing here does I/O except through the store it is given.

pub mod accounts;
pub mod classify;
pub mod decision;
pub mod grants;
pub mod keys;
pub mod mask;
pub mod principal;
pub mod protect;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use hutong_store::{Scope, Store, StoreError};

pub use accounts::{Accounts, AuthError};
pub use decision::{Asker, Directory, Refusal};
pub use grants::{Grant, Grantee, Grants, Method, Status};
pub use keys::Keyring;
pub use mask::View;
pub use principal::{Capability, Kind, Perms, Principal, Role, Scopes};

/// Durations of grants.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How long a grant by SMS code or app approval lasts (default 24 h).
    pub grant_ms: i64,
    /// How long break-glass access lasts (default 4 h).
    pub break_glass_ms: i64,
    /// How long before and after an appointment its grant holds (default 2 h before, 24 h
    /// after its end).
    pub appointment_before_ms: i64,
    pub appointment_after_ms: i64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            grant_ms: 24 * 3_600_000,
            break_glass_ms: 4 * 3_600_000,
            appointment_before_ms: 2 * 3_600_000,
            appointment_after_ms: 24 * 3_600_000,
        }
    }
}

type ScopeKey = (String, u64, u64);

/// The access service: keys, tokens, accounts, grants and the decision over them.
pub struct Access {
    pub keys: Arc<RwLock<Keyring>>,
    pub tokens: token::Tokens,
    pub accounts: Accounts,
    pub grants: RwLock<Grants>,
    pub classifier: classify::Classifier,
    pub policy: Policy,
    /// Last Consent change read from the store (ms).
    synced: Mutex<(i64, i64)>,
    /// Scopes computed for a principal, reused until grants or person links change or a
    /// grant starts or ends.
    scopes: Mutex<HashMap<ScopeKey, (Scope, i64)>>,
    /// The newest version of each Consent read so far.
    seen: Mutex<HashMap<String, i64>>,
}

/// How often the grants are caught up from the store for changes other API nodes made.
const SYNC_EVERY_MS: i64 = 1_000;

impl Access {
    pub fn new(
        store: &Store,
        keys: Arc<RwLock<Keyring>>,
        issuer: &str,
    ) -> Result<Access, StoreError> {
        let accounts = Accounts::open(store.clone(), keys.clone())?;
        let access = Access {
            tokens: token::Tokens::new(keys.clone(), issuer),
            keys,
            accounts,
            grants: RwLock::new(Grants::default()),
            classifier: classify::Classifier::builtin(),
            policy: Policy::default(),
            synced: Mutex::new((i64::MIN, i64::MIN)),
            scopes: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        };
        access.sync_grants(store, true)?;
        Ok(access)
    }

    /// Reads Consent changes from the store (all of them the first time; then what changed
    /// since, at most once a second unless `force`).
    pub fn sync_grants(&self, store: &Store, force: bool) -> Result<(), StoreError> {
        let now = hutong_fhir::date::now_ms();
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if !force && now - synced.1 < SYNC_EVERY_MS {
            return Ok(());
        }
        self.sync_revocations()?;
        // Writes may commit a little after they were stamped: look back a few seconds, but
        // read only the versions not seen yet.
        let since = if synced.0 == i64::MIN {
            i64::MIN
        } else {
            synced.0 - 5_000
        };
        let keys = store.changes_since("Consent", since)?;
        let newest = keys.iter().map(|k| k.last_updated).fold(synced.0, i64::max);
        let fresh: Vec<_> = keys
            .into_iter()
            .filter(|k| !k.deleted && !self.versions_seen(k))
            .collect();
        let mut grants = self.grants.write().unwrap_or_else(|e| e.into_inner());
        for k in fresh {
            let Some(s) = store
                .vread("Consent", &k.id, k.version, &Scope::All)?
                .found()
            else {
                continue;
            };
            if let Ok(v) = s.json() {
                if let Some(g) = Grant::from_consent(&v) {
                    let stale = grants
                        .get(&g.id)
                        .is_some_and(|old| old.recorded > g.recorded);
                    if !stale {
                        grants.put(g);
                    }
                }
            }
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(k.id.clone(), k.version);
        }
        *synced = (newest, now);
        Ok(())
    }

    /// Learns the revocations recorded by any node (or the command line).
    fn sync_revocations(&self) -> Result<(), StoreError> {
        let now = hutong_fhir::date::now_ms() / 1000;
        let rows = match self.accounts.revocations(now) {
            Ok(r) => r,
            Err(AuthError::Store(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        for (k, at, until) in rows {
            if let Some(jti) = k.strip_prefix("jti:") {
                self.tokens.revoke_id(jti, until);
            } else if let Some(key) = k.strip_prefix("sub:") {
                self.tokens.revoke_principal(key, at);
            }
        }
        Ok(())
    }

    /// Signs a token out: it is refused from now on, on every node.
    pub fn revoke_token(&self, token: &str) -> Result<(), AuthError> {
        let (jti, exp) = self
            .tokens
            .revoke(token)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        self.accounts
            .record_revocation(&format!("jti:{jti}"), 0, exp)
    }

    /// Disables a client and every token it holds, at once.
    pub fn disable_client(&self, client_id: &str) -> Result<(), AuthError> {
        self.accounts.disable_client(client_id)?;
        // What the accounts recorded, taken in here now rather than at the next catch-up.
        Ok(self.sync_revocations()?)
    }

    fn versions_seen(&self, k: &hutong_store::VersionKey) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&k.id)
            .is_some_and(|v| *v >= k.version)
    }

    /// The rows `a` may see under `grant` alone: a resident's consent recorded at another
    /// node of the hierarchy and vouched for by it, in force for one request and never
    /// stored here. The same decision as [`Access::scope`], over that one grant.
    pub fn vouched_scope(&self, a: Asker<'_>, grant: grants::Grant, dir: &dyn Directory) -> Scope {
        let mut g = Grants::default();
        g.put(grant);
        decision::scope(a, &g, dir, hutong_fhir::date::now_ms())
    }

    /// The rows `a` may see now, given the persons' Patients in `dir`.
    pub fn scope(&self, a: Asker<'_>, dir: &dyn Directory, dir_generation: u64) -> Scope {
        let now = hutong_fhir::date::now_ms();
        let grants = self.grants.read().unwrap_or_else(|e| e.into_inner());
        let key: ScopeKey = (
            format!(
                "{:?}|{}|{:?}|{:?}|{:?}|{}|{}",
                a.principal.kind,
                a.principal.subject,
                a.principal.institution,
                a.principal.person,
                a.principal.roles,
                a.principal.scopes,
                a.reason.is_some()
            ),
            grants.generation,
            dir_generation,
        );
        if let Some((s, until)) = self
            .scopes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if now < *until {
                return s.clone();
            }
        }
        let s = decision::scope(a, &grants, dir, now);
        let grantee = match (&a.principal.institution, &a.principal.person) {
            (Some(i), _) => Some(Grantee::Institution(i.clone())),
            (None, Some(p)) => Some(Grantee::Person(p.clone())),
            _ => None,
        };
        let until = grantee
            .and_then(|g| grants.next_change(&g, now))
            .unwrap_or(i64::MAX);
        let mut cache = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, (s.clone(), until));
        s
    }

    /// Records a grant just written (this node sees it at once; others within a second).
    pub fn grant_written(&self, g: Grant) {
        self.grants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .put(g);
    }
}

//! The FHIR REST engine: every interaction as a function from a request to a response,
//! independent of HTTP so that bundles, the CLI and tests drive the same code.

pub mod bulk;
pub(crate) mod bundle;
pub(crate) mod read;
pub(crate) mod write;

use std::sync::Arc;

use hutong_access::principal::Kind;
use hutong_access::Access;
use hutong_store::{Store, Stored, Tx};
use serde_json::Value;

use crate::wire::Req;
/// The platform extension on `meta` that records when the source collected the data (采集时间).
pub use hutong_fhir::vocab::COLLECTED_URL;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Source recorded when a request names none.
    pub default_source: String,
    /// Where `$export` writes its NDJSON files.
    pub export_dir: std::path::PathBuf,
    /// The intake rules in force.
    pub rules: hutong_quality::Rules,
    /// The slot pool's share, release and hold times.
    pub pool: hutong_coordination::Policy,
}

/// The engine: a store, the access decision, the audit trail and settings. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub store: Store,
    pub config: EngineConfig,
    /// The Patient index behind `$match` and the person registry, shared by clones.
    pub matcher: Arc<hutong_link::matching::Matcher>,
    /// Accounts, tokens, grants and the decision over them.
    pub access: Arc<Access>,
    /// Where access entries are appended.
    pub audit: Arc<hutong_audit::Sink>,
    /// The intake rules, run on every submitted resource.
    pub checker: Arc<hutong_quality::Checker>,
    /// Reports derived from the store (scorecards, indicators), kept while nothing they
    /// count has changed.
    pub derived: Arc<Derived>,
    /// Runs in the transaction that records a grant's change: the domains above the engine
    /// that follow grants (a referral waits for the resident's consent) set it, so that the
    /// access module need not know them.
    pub(crate) grant_hook: GrantHook,
    /// Subscriptions' live side: bound websockets, binding tokens, the delivery client.
    pub hub: Arc<crate::exchange::Hub>,
}

/// See [`Engine::grant_hook`].
pub(crate) type GrantHook =
    fn(&Engine, &mut Tx<'_>, &hutong_access::grants::Grant) -> Result<(), crate::error::ApiError>;

impl Engine {
    pub fn new(store: Store, config: EngineConfig, access: Arc<Access>) -> Engine {
        let audit = Arc::new(hutong_audit::Sink::start(store.clone()));
        Engine {
            checker: Arc::new(hutong_quality::Checker::new(config.rules.clone())),
            store,
            config,
            matcher: Default::default(),
            access,
            audit,
            derived: Default::default(),
            grant_hook: |_, _, _| Ok(()),
            hub: Default::default(),
        }
    }

    /// Records an accepted version's intake findings and fingerprint in its write
    /// transaction (see [`crate::governance::intake::record`]).
    pub(crate) fn keep(
        &self,
        tx: &mut Tx<'_>,
        source: &str,
        s: &Stored,
        findings: &[hutong_quality::Finding],
        fingerprint: &str,
    ) -> Result<(), hutong_store::StoreError> {
        crate::governance::intake::record(
            tx,
            &self.checker.rules.work_orders,
            source,
            s,
            findings,
            fingerprint,
        )
    }

    /// Classifies sensitive content and stamps provenance on a resource an institution
    /// submits.
    pub fn intake(&self, v: &mut Value, source: &str, now: i64) {
        self.access.classifier.label(v);
        // Catalogued tests sent in a convertible unit are stored in the platform's.
        hutong_quality::normalise(v);
        hutong_fhir::vocab::stamp(v, source, now);
    }

    /// The source a request's writes are recorded under: the institution of the principal;
    /// the platform (its services, the command line) names it.
    pub(crate) fn source_of(&self, req: &Req) -> String {
        match (&req.principal.kind, &req.principal.institution) {
            (Kind::Platform, _) | (_, None) => {
                if req.source.is_empty() {
                    self.config.default_source.clone()
                } else {
                    req.source.clone()
                }
            }
            (_, Some(i)) => i.clone(),
        }
    }
}

/// Derived reports kept between requests: each under a key, with the marker of the data it
/// was built from (the latest change times of what it counts). A report is a scan of a
/// period's resources, which an operator's page should not pay on every view; a changed
/// marker builds it anew. Type-erased so that the engine need not know the domains whose
/// reports it keeps.
#[derive(Default)]
pub struct Derived {
    entries: std::sync::Mutex<Vec<DerivedEntry>>,
}

type DerivedEntry = (String, Vec<i64>, Arc<dyn std::any::Any + Send + Sync>);

/// Reports kept at most.
const DERIVED_KEPT: usize = 8;

impl Derived {
    /// The report kept under `key` for `marker`, or the one `build` makes (then kept).
    pub fn get_or_build<T, E>(
        &self,
        key: &str,
        marker: Vec<i64>,
        build: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E>
    where
        T: Send + Sync + 'static,
    {
        {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let kept = entries
                .iter()
                .find(|(k, m, _)| k == key && *m == marker)
                .and_then(|(_, _, r)| r.clone().downcast::<T>().ok());
            if let Some(r) = kept {
                return Ok(r);
            }
        }
        let r = Arc::new(build()?);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(k, _, _)| k != key);
        entries.insert(0, (key.to_string(), marker, r.clone()));
        entries.truncate(DERIVED_KEPT);
        Ok(r)
    }
}

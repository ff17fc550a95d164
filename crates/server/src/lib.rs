//! Hutong's FHIR server: the REST engine, the platform's domains over it, and the HTTP front.
//!
//! Layout, from the bottom up (each file imports only files of the layers below it, or
//! its own; no import circle, file by file):
//! - [`error`], [`wire`]: `ApiError` and its code table, and the wire types and helpers
//!   every handler shares (requests, responses, JSON envelope checks, query strings, paging,
//!   the Bundle writer).
//! - [`capability`]: the CapabilityStatement and the OperationDefinitions served.
//! - [`engine`] (`mod.rs`): the engine's state (store, access, audit, intake rules, the
//!   identity index); [`guard`]: the access decision and audit entry of one request;
//!   [`governance::orders`] and [`governance::intake`]: the bookkeeping a write does inside
//!   its transaction.
//! - the interactions: [`engine::read`], [`engine::write`] (the one write path, over a
//!   store transaction: REST, batch, transaction entries and bulk import call it),
//!   [`engine::bundle`] (transaction and batch), [`engine::bulk`] (import and export).
//!   Appointment-linked grants ([`consent::appointments`]) follow a committed write.
//! - the operations by domain: [`governance`] (quarantine, work orders, reconciliation,
//!   scorecards), [`consent`] (grants, break-glass, the audit trail), [`identity`] (PIX and
//!   the person operations; the index itself is `hutong-link`).
//! - [`operations`], [`routes`]: the routing tables — `$operations` (with `$match` and
//!   `$export`), then every request.
//! - [`http`]: the axum front and signing in; [`Application`]: settings → a bound server.

pub(crate) mod capability;
pub mod consent;
pub mod coordination;
pub mod engine;
pub mod error;
pub mod exchange;
pub mod governance;
pub mod guard;
pub mod http;
pub(crate) mod identity;
pub(crate) mod operations;
pub(crate) mod routes;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use hutong_access::Keyring;
use hutong_store::{Location, Store};

use crate::governance::intake;
use crate::governance::workorders;
pub use engine::{Engine, EngineConfig};

/// Server settings (see the CLI for how they are read from flags, file and environment).
#[derive(Debug, Clone)]
pub struct Settings {
    /// A data directory (embedded SQLite) or a `postgres://` URL.
    pub database: String,
    pub listen: SocketAddr,
    pub body_limit: usize,
    pub default_source: String,
    pub base_url: Option<String>,
    pub export_dir: Option<PathBuf>,
    /// How often new Patients are linked to persons in the background; `None` links only
    /// when persons are read or matched.
    pub link_interval: Option<std::time::Duration>,
    /// Trust rank of each source (`meta.source`) for the person's golden record; higher
    /// wins, unlisted sources rank 0.
    pub source_trust: std::collections::HashMap<String, i32>,
    /// Decision thresholds of person linking (log2 posterior odds).
    pub thresholds: hutong_mpi::Thresholds,
    /// Where the identity index lives; `None`: in memory on the embedded store, in the
    /// database on PostgreSQL.
    pub mpi_index: Option<hutong_link::IndexKind>,
    /// The keyring; by default `keys.json` in the data directory (embedded store) or
    /// `./hutong-keys.json` (PostgreSQL).
    pub keys_file: Option<PathBuf>,
    /// How long grants last.
    pub policy: hutong_access::Policy,
    /// Serve the development message outbox over HTTP (`/dev/outbox`): for the demo and
    /// tests only, since it shows one-time codes.
    pub dev_outbox: bool,
    /// How often the audit trail's heads are signed.
    pub checkpoint_interval: std::time::Duration,
    /// The intake rules (the defaults overridden by the deployment's rules file).
    pub rules: hutong_quality::Rules,
    /// The slot pool: the family-doctor share, its release time, how long a hold lasts.
    pub pool: hutong_coordination::Policy,
    /// This platform as a node of the hierarchy (district, city, province); `None`: a
    /// platform on its own.
    pub node: Option<hutong_exchange::node::Node>,
}

impl Settings {
    pub fn location(&self) -> Location {
        Location::parse(&self.database)
    }

    /// Settings with defaults for everything but where the data lives.
    pub fn new(database: impl Into<String>) -> Settings {
        Settings {
            database: database.into(),
            listen: "127.0.0.1:8080".parse().expect("a valid address"),
            body_limit: 64 * 1024 * 1024,
            default_source: "urn:hutong:source:unspecified".into(),
            base_url: None,
            export_dir: None,
            rules: hutong_quality::Rules::default(),
            link_interval: Some(std::time::Duration::from_secs(2)),
            source_trust: Default::default(),
            thresholds: Default::default(),
            mpi_index: None,
            keys_file: None,
            policy: Default::default(),
            dev_outbox: false,
            checkpoint_interval: std::time::Duration::from_secs(60),
            pool: Default::default(),
            node: None,
        }
    }

    pub fn keys_path(&self) -> PathBuf {
        keys_path(&self.location(), self.keys_file.as_deref())
    }
}

/// Where the keyring is: as configured, else beside the embedded store's data, else in the
/// working directory.
pub fn keys_path(loc: &Location, configured: Option<&std::path::Path>) -> PathBuf {
    match (configured, loc) {
        (Some(p), _) => p.to_path_buf(),
        (None, Location::Sqlite(dir)) => dir.join("keys.json"),
        (None, Location::Postgres(_)) => PathBuf::from("hutong-keys.json"),
    }
}

/// Opens the store with its keyring, so that identity data is encrypted at rest and its
/// searchable hashes are keyed. Everything that opens a store goes through here.
pub fn open_store(
    loc: &Location,
    keys_file: Option<&std::path::Path>,
) -> Result<(Store, Arc<RwLock<Keyring>>), StartError> {
    let path = keys_path(loc, keys_file);
    let keys = Arc::new(RwLock::new(Keyring::open_or_create(&path)?));
    let store = Store::open(loc)?;
    protect(&store, keys.clone())?;
    Ok((store, keys))
}

/// Puts a just-opened store under the keyring's protection; identity data written before
/// encryption was switched on is encrypted now.
pub fn protect(store: &Store, keys: Arc<RwLock<Keyring>>) -> Result<(), StartError> {
    store.set_protector(Arc::new(hutong_access::protect::KeyringProtector::new(
        keys,
    )));
    if store.meta("identity-protected")?.is_none() {
        let n = reprotect(store)?;
        if n > 0 {
            tracing::info!(
                resources = n,
                "Encrypted identity data written before encryption."
            );
        }
        store.set_meta("identity-protected", "1")?;
    }
    Ok(())
}

/// Re-encrypts every identity resource under the current data key and rebuilds its keyed
/// index values (after a key rotation; `hutong keys reencrypt`). Returns how many were
/// rewritten.
pub fn reprotect(store: &Store) -> Result<u64, hutong_store::StoreError> {
    let entry = hutong_audit::Entry {
        action: "reencrypt".into(),
        outcome: 200,
        who: guard::who(&hutong_access::Principal::platform("hutong keys")),
        purpose: Some("HSYSADMIN".into()),
        request: "re-encrypt identity data under the current data key".into(),
        ..Default::default()
    };
    let mut n = 0;
    for t in hutong_access::protect::SEALED_TYPES {
        n += store.reprotect(t, &entry.hook())?;
    }
    Ok(n)
}

/// The engine over an opened store: the access service and audit trail wired in.
pub fn engine_for(
    store: Store,
    keys: Arc<RwLock<Keyring>>,
    config: EngineConfig,
    issuer: &str,
    policy: hutong_access::Policy,
) -> Result<Engine, StartError> {
    let mut access = hutong_access::Access::new(&store, keys, issuer)?;
    access.policy = policy;
    governance::intake::open(&store)?;
    governance::orders::open_tables(&store)?;
    governance::reconcile::open_tables(&store)?;
    coordination::open_tables(&store)?;
    exchange::open_tables(&store)?;
    exchange::links::open_tables(&store)?;
    let mut engine = Engine::new(store, config, Arc::new(access));
    engine.grant_hook = coordination::referral::grant_changed;
    Ok(engine)
}

/// Why a store could not be opened or a server not built: the binary reports it and stops.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the keyring: {0}")]
    Keys(#[from] hutong_access::keys::KeyError),
    #[error("the store: {0}")]
    Store(#[from] hutong_store::StoreError),
    #[error("the access service: {0}")]
    Access(#[from] hutong_access::AuthError),
    #[error("the settings: {0}")]
    Settings(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The issuer named in tokens: the public base when configured (several API nodes share it).
fn issuer(settings: &Settings) -> String {
    settings
        .base_url
        .clone()
        .unwrap_or_else(|| "urn:hutong:platform".to_string())
}

/// A built server: the store opened and the listener bound.
pub struct Application {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    state: Arc<http::AppState>,
    pub engine: Engine,
    /// Tells the background work (linking, grants, checkpoints) to end with the server.
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Runs `f` every `period` on a thread of its own until `stop` is set. A failure is logged
/// once, and its recovery too, rather than at every attempt.
fn every(
    name: &str,
    period: std::time::Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
    mut f: impl FnMut() -> Result<(), String> + Send + 'static,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering;
    let name = name.to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let mut failing = false;
            loop {
                let until = std::time::Instant::now() + period;
                while std::time::Instant::now() < until {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(period.min(std::time::Duration::from_millis(100)));
                }
                match f() {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!(task = %name, "Background task recovered.");
                    }
                    Ok(()) => {}
                    Err(msg) if !failing => {
                        failing = true;
                        tracing::warn!(task = %name, "{msg}");
                    }
                    Err(_) => {}
                }
            }
        })?;
    Ok(())
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Application, StartError> {
        let loc = settings.location();
        let kf = settings.keys_file.clone();
        let (store, keys) =
            tokio::task::spawn_blocking(move || open_store(&loc, kf.as_deref())).await??;
        Application::with_store(settings, store, keys).await
    }

    pub async fn with_store(
        settings: Settings,
        store: Store,
        keys: Arc<RwLock<Keyring>>,
    ) -> Result<Application, StartError> {
        let export_dir = settings
            .export_dir
            .clone()
            .unwrap_or_else(|| match settings.location() {
                Location::Sqlite(dir) => dir.join("exports"),
                Location::Postgres(_) => PathBuf::from("hutong-exports"),
            });
        let config = EngineConfig {
            default_source: settings.default_source.clone(),
            export_dir,
            rules: settings.rules.clone(),
            pool: settings.pool.clone(),
        };
        let iss = issuer(&settings);
        let policy = settings.policy.clone();
        let engine =
            tokio::task::spawn_blocking(move || engine_for(store, keys, config, &iss, policy))
                .await??;
        engine.matcher.set_trust(settings.source_trust.clone());
        if settings.thresholds.review > settings.thresholds.link {
            return Err(StartError::Settings(format!(
                "review_threshold ({}) must not be above link_threshold ({})",
                settings.thresholds.review, settings.thresholds.link
            )));
        }
        engine.matcher.set_thresholds(settings.thresholds);
        if let Some(kind) = settings.mpi_index {
            engine.matcher.set_index_kind(kind);
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(period) = settings.link_interval {
            let e = engine.clone();
            every("hutong-linker", period, stop.clone(), move || {
                e.matcher.sync(&e.store).map_err(|err| {
                    format!("Linking new Patients to persons failed; will retry: {err}")
                })
            })?;
        }
        // Grants changed by other API nodes (PostgreSQL) take effect here within a second.
        let e = engine.clone();
        every(
            "hutong-grants",
            std::time::Duration::from_secs(1),
            stop.clone(),
            move || {
                e.access
                    .sync_grants(&e.store, false)
                    .map_err(|err| format!("Reading grants failed; will retry: {err}"))
            },
        )?;
        // Work orders past their due date are escalated, repeated rule failures open orders.
        let e = engine.clone();
        every(
            "hutong-work-orders",
            std::time::Duration::from_secs(60),
            stop.clone(),
            move || {
                let now = hutong_fhir::date::now_ms();
                workorders::sweep(&e, now).map(|_| ()).map_err(|err| {
                    format!("The work-order sweep failed; will retry: {}", err.message())
                })?;
                // Referrals not accepted in time are escalated by the same clock.
                coordination::referral::sweep(&e, now)
                    .map(|_| ())
                    .map_err(|err| {
                        format!("The referral sweep failed; will retry: {}", err.message())
                    })
            },
        )?;
        let e = engine.clone();
        every(
            "hutong-checkpoint",
            settings.checkpoint_interval,
            stop.clone(),
            move || {
                e.audit.flush(std::time::Duration::from_secs(10));
                consent::trail::checkpoint(&e).map(|_| ()).map_err(|err| {
                    format!(
                        "Signing audit checkpoints failed; will retry: {}",
                        err.message()
                    )
                })
            },
        )?;
        // Subscriptions: the change log read into events, and the events delivered.
        exchange::deliver::start(engine.clone(), stop.clone());
        let state = Arc::new(http::AppState {
            engine: engine.clone(),
            body_limit: settings.body_limit,
            base_url: settings.base_url.clone(),
            limits: Default::default(),
            dev_outbox: settings.dev_outbox,
        });
        let listener = tokio::net::TcpListener::bind(settings.listen).await?;
        // Notifications name resources against the configured public base, else the address
        // bound (never a request's Host header, which any caller chooses).
        match &settings.base_url {
            Some(b) => engine.hub.set_base(b),
            None => engine
                .hub
                .set_base(&format!("http://{}/fhir", listener.local_addr()?)),
        }
        if let Some(node) = settings.node.clone() {
            let node = Arc::new(node);
            engine.hub.set_node(node.clone());
            if node.upstream.is_some() {
                let e = engine.clone();
                tokio::task::spawn_blocking(move || exchange::upward::open(&e))
                    .await?
                    .map_err(|e| StartError::Settings(e.message().to_string()))?;
                exchange::upward::start(engine.clone(), node.clone(), stop.clone());
            }
            if node.upstream.is_some() {
                exchange::downward::start(engine.clone(), node.clone(), stop.clone());
            }
            tracing::info!(node = %node.id, level = node.level.as_str(), upstream = ?node.upstream.as_ref().map(|u| &u.url), "Serving as a node of the platform hierarchy.");
        }
        Ok(Application {
            listener,
            router: http::app(state.clone()),
            state,
            engine,
            stop,
        })
    }

    /// Adds routes served beside the FHIR API (the web portals), over the same state.
    pub fn with_routes(
        mut self,
        f: impl FnOnce(Arc<http::AppState>) -> axum::Router,
    ) -> Application {
        self.router = self.router.merge(f(self.state.clone()));
        self
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` resolves; requests in flight finish first, then the audit
    /// entries still queued are written and the trail's heads signed.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let r = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let e = self.engine.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if !e.audit.flush(std::time::Duration::from_secs(30)) {
                tracing::error!("Some audit entries could not be written before shutdown.");
            }
            if let Err(err) = consent::trail::checkpoint(&e) {
                tracing::warn!(error = %err.message(), "Signing the final audit checkpoint failed.");
            }
        })
        .await;
        r
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("Shutdown requested; finishing requests in flight.");
}

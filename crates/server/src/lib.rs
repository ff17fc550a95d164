//! Hutong's FHIR server.
//!
//! Layout:
//! - [`engine`]: every FHIR interaction as a function of a request (no HTTP types), used by
//!   the HTTP front, bundles and the CLI alike.
//! - [`bundle`]: transaction and batch Bundles.
//! - [`operations`]: `$everything` and Bulk Data `$export`.
//! - [`capability`]: the CapabilityStatement, generated from what is implemented.
//! - [`http`]: the axum router.
//! - [`error`]: `ApiError`, the status + OperationOutcome every failure becomes.
//! - [`Application`]: settings → a bound server with graceful shutdown.

pub mod bulk;
pub mod bundle;
pub mod capability;
pub mod engine;
pub mod error;
pub mod http;
pub mod matching;
pub mod operations;
pub mod person_api;
pub mod persons;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hutong_store::{Location, Store};

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
}

impl Settings {
    pub fn location(&self) -> Location {
        Location::parse(&self.database)
    }
}

/// A built server: the store opened and the listener bound.
pub struct Application {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    pub engine: Engine,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let loc = settings.location();
        let store = tokio::task::spawn_blocking(move || Store::open(&loc)).await??;
        Application::with_store(settings, store).await
    }

    pub async fn with_store(settings: Settings, store: Store) -> anyhow::Result<Application> {
        let export_dir = settings
            .export_dir
            .clone()
            .unwrap_or_else(|| match settings.location() {
                Location::Sqlite(dir) => dir.join("exports"),
                Location::Postgres(_) => PathBuf::from("hutong-exports"),
            });
        let engine = Engine::new(
            store,
            EngineConfig {
                default_source: settings.default_source.clone(),
                export_dir,
            },
        );
        engine.matcher.set_trust(settings.source_trust.clone());
        anyhow::ensure!(
            settings.thresholds.review <= settings.thresholds.link,
            "review_threshold ({}) must not be above link_threshold ({})",
            settings.thresholds.review,
            settings.thresholds.link
        );
        engine.matcher.set_thresholds(settings.thresholds);
        if let Some(every) = settings.link_interval {
            let e = engine.clone();
            std::thread::Builder::new()
                .name("hutong-linker".into())
                .spawn(move || loop {
                    std::thread::sleep(every);
                    if let Err(err) = e.matcher.sync(&e.store) {
                        tracing::warn!(error = %err, "Linking new Patients to persons failed; will retry.");
                    }
                })?;
        }
        let state = Arc::new(http::AppState {
            engine: engine.clone(),
            body_limit: settings.body_limit,
            base_url: settings.base_url.clone(),
        });
        let listener = tokio::net::TcpListener::bind(settings.listen).await?;
        Ok(Application {
            listener,
            router: http::app(state),
            engine,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` resolves; requests in flight finish first.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
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

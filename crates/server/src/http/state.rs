//! What the HTTP front shares between requests: the engine, its settings, and the
//! per-node sign-in limiter.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;

use crate::engine::Engine;

/// Shared state of the HTTP front.
pub struct AppState {
    pub engine: Engine,
    pub body_limit: usize,
    /// Fixed public base URL; derived from `Host` when absent.
    pub base_url: Option<String>,
    /// Sign-in attempts per address.
    pub limits: RateLimit,
    /// Serve the development outbox at `/dev/outbox` (demo and tests only: it shows codes).
    pub dev_outbox: bool,
}

impl AppState {
    /// The FHIR base URL as clients see it.
    pub fn public_base(&self, headers: &HeaderMap) -> String {
        self.base_url.clone().unwrap_or_else(|| {
            let host = headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}/fhir")
        })
    }
}

/// Attempts per address per minute at the sign-in endpoints.
const ATTEMPTS_PER_MINUTE: u32 = 30;

/// A fixed-window counter of sign-in attempts per client address.
#[derive(Default)]
pub struct RateLimit {
    windows: Mutex<HashMap<String, (i64, u32)>>,
}

impl RateLimit {
    pub(crate) fn allow(&self, who: &str) -> bool {
        let minute = hutong_fhir::date::now_ms() / 60_000;
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if w.len() > 100_000 {
            w.retain(|_, (m, _)| *m == minute);
        }
        let e = w.entry(who.to_string()).or_insert((minute, 0));
        if e.0 != minute {
            *e = (minute, 0);
        }
        e.1 += 1;
        e.1 <= ATTEMPTS_PER_MINUTE
    }
}

//! Intake at a glance (`GET $intake[?hours=N]`): what each institution sent in each of the
//! last N hours, what the intake rules rejected, and how long after collection the data
//! arrived — the operator's first look when an institution goes quiet or starts failing.
//!
//! Counts are exact (every version received, from the store's own rows, and every
//! quarantined submission). The upload delay (received − the institution's collection time)
//! is measured on a sample, the most recently received resources (so an institution that sent
//! nothing lately has no delay figure), and the page costs the same on a quiet day and a busy
//! one; the answer says how many it measured.

use std::collections::BTreeMap;

use hutong_fhir::date::{format_instant, now_ms};
use hutong_quality::scorecard::percentile;
use hutong_store::sql::Val;
use serde_json::{json, Value};

use crate::engine::{Engine, COLLECTED_URL};
use crate::error::forbidden;
use crate::error::ApiError;
use crate::guard::Guard;
use crate::wire::{Req, Resp};

const HOUR_MS: i64 = 3_600_000;

/// The part of a resource the delay needs: `meta.extension`.
#[derive(Default, serde::Deserialize)]
struct Provenance {
    #[serde(default)]
    meta: Meta,
}

#[derive(Default, serde::Deserialize)]
struct Meta {
    #[serde(default)]
    extension: Vec<Extension>,
}

#[derive(serde::Deserialize)]
struct Extension {
    #[serde(default)]
    url: String,
    #[serde(default, rename = "valueInstant")]
    value_instant: Option<String>,
}
/// The most recently received resources whose upload delay is measured.
pub const DELAY_SAMPLE: usize = 1_000;

/// One institution's hours.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub received: Vec<u64>,
    pub rejected: Vec<u64>,
    /// Upload delays (ms) of the sampled resources.
    pub delays: Vec<i64>,
}

/// The last `hours` hours ending with the one that holds `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub start: i64,
    pub hours: usize,
}

impl Window {
    pub fn ending(now: i64, hours: usize) -> Window {
        let hours = hours.max(1);
        let this = now.div_euclid(HOUR_MS) * HOUR_MS;
        Window {
            start: this - (hours as i64 - 1) * HOUR_MS,
            hours,
        }
    }

    /// The hour `at` falls in, if inside the window.
    pub fn slot(&self, at: i64) -> Option<usize> {
        let i = (at - self.start).div_euclid(HOUR_MS);
        (0..self.hours as i64).contains(&i).then_some(i as usize)
    }
}

/// Per-source hourly counts and delays, from `(source, hour start, count)` received rows,
/// `(source, at)` rejections and `(source, delay)` samples.
pub fn tally(
    w: &Window,
    received: &[(String, i64, u64)],
    rejected: &[(String, i64)],
    delays: &[(String, i64)],
) -> BTreeMap<String, Row> {
    let mut out: BTreeMap<String, Row> = BTreeMap::new();
    let blank = || Row {
        received: vec![0; w.hours],
        rejected: vec![0; w.hours],
        delays: Vec::new(),
    };
    for (s, h, n) in received {
        if let Some(i) = w.slot(*h) {
            out.entry(s.clone()).or_insert_with(blank).received[i] += n;
        }
    }
    for (s, at) in rejected {
        if let Some(i) = w.slot(*at) {
            out.entry(s.clone()).or_insert_with(blank).rejected[i] += 1;
        }
    }
    for (s, d) in delays {
        out.entry(s.clone())
            .or_insert_with(blank)
            .delays
            .push((*d).max(0));
    }
    out
}

fn hours_of(ms: i64) -> f64 {
    (ms as f64 / HOUR_MS as f64 * 100.0).round() / 100.0
}

/// The intake of the window as JSON: the hours (UTC+8 labels), the region's totals per hour
/// and each institution's, busiest first.
pub fn report(engine: &Engine, w: &Window) -> Result<Value, ApiError> {
    let store = &engine.store;
    let platform = crate::governance::scorecards::PLATFORM_SOURCES;
    let received: Vec<(String, i64, u64)> = store
        .received_per_hour(w.start)?
        .into_iter()
        .filter(|(s, _, _)| !s.is_empty() && !platform.contains(&s.as_str()))
        .collect();
    let rejected: Vec<(String, i64)> = store
        .query_admin(
            "SELECT src, at FROM qc_quarantine WHERE at >= ?",
            &[Val::Int(w.start)],
        )?
        .iter()
        .map(|r| (r[0].text().to_string(), r[1].int()))
        .collect();
    let mut delays = Vec::new();
    for s in store.latest_received(w.start, DELAY_SAMPLE)? {
        if platform.contains(&s.source.as_str()) {
            continue;
        }
        // Only the provenance extension is wanted: the rest of the body is skipped unparsed.
        let meta: Provenance = serde_json::from_slice(&s.body).unwrap_or_default();
        let collected = meta
            .meta
            .extension
            .iter()
            .find(|e| e.url == COLLECTED_URL)
            .and_then(|e| e.value_instant.as_deref())
            .and_then(hutong_fhir::date::parse);
        if let Some(c) = collected {
            delays.push((s.source.clone(), s.last_updated - c.lo));
        }
    }
    let rows = tally(w, &received, &rejected, &delays);
    let orgs = crate::governance::scorecards::organizations(engine)?;
    let mut region = Row {
        received: vec![0; w.hours],
        rejected: vec![0; w.hours],
        delays: Vec::new(),
    };
    let mut institutions: Vec<Value> = Vec::new();
    for (src, r) in &rows {
        for i in 0..w.hours {
            region.received[i] += r.received[i];
            region.rejected[i] += r.rejected[i];
        }
        region.delays.extend_from_slice(&r.delays);
        let (name, district) = orgs
            .get(src)
            .map(|(n, d)| (Some(n.clone()), d.clone()))
            .unwrap_or((None, None));
        institutions.push(json!({
            "source": src,
            "name": name,
            "district": district,
            "figures": figures(r),
        }));
    }
    institutions.sort_by_key(|i| std::cmp::Reverse(i["figures"]["received"].as_u64()));
    let hours: Vec<String> = (0..w.hours)
        .map(|i| format_instant(w.start + i as i64 * HOUR_MS))
        .collect();
    Ok(json!({
        "from": format_instant(w.start),
        "to": format_instant(w.start + w.hours as i64 * HOUR_MS),
        "hours": hours,
        "delaySample": DELAY_SAMPLE,
        "region": figures(&region),
        "institutions": institutions,
    }))
}

fn figures(r: &Row) -> Value {
    let mut d = r.delays.clone();
    d.sort_unstable();
    json!({
        "received": r.received.iter().sum::<u64>(),
        "rejected": r.rejected.iter().sum::<u64>(),
        "receivedPerHour": r.received,
        "rejectedPerHour": r.rejected,
        "delay": {
            "measured": d.len(),
            "medianHours": percentile(&d, 50.0).map(hours_of),
            "p90Hours": percentile(&d, 90.0).map(hours_of),
        },
    })
}

/// `GET $intake[?hours=1..168]` (default 24): for quality officers and administrators.
pub fn op(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("intake");
    if !crate::governance::workorders::operator(g) {
        return Err(forbidden(
            "Intake figures are for quality officers and administrators",
        ));
    }
    let mut hours = 24usize;
    for (k, v) in &req.query {
        match k.as_str() {
            "hours" => {
                hours = v
                    .parse()
                    .ok()
                    .filter(|h| (1..=168).contains(h))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("hours must be 1 to 168, not '{v}'"))
                    })?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "Unknown parameter '{other}' (hours)"
                )))
            }
        }
    }
    let w = Window::ending(now_ms(), hours);
    let v = report(engine, &w)?;
    g.note(format!("intake of the last {hours} hours"));
    Ok(Resp::plain_json(200, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_are_counted_in_their_slot_and_outside_ones_dropped() {
        let now = 10 * HOUR_MS + 1_234;
        let w = Window::ending(now, 3);
        assert_eq!(w.start, 8 * HOUR_MS);
        assert_eq!(w.slot(8 * HOUR_MS), Some(0));
        assert_eq!(w.slot(now), Some(2));
        assert_eq!(w.slot(8 * HOUR_MS - 1), None);
        assert_eq!(w.slot(11 * HOUR_MS), None);
        let rows = tally(
            &w,
            &[
                ("a".into(), 8 * HOUR_MS, 5),
                ("a".into(), 10 * HOUR_MS, 2),
                ("a".into(), 7 * HOUR_MS, 100),
                ("b".into(), 9 * HOUR_MS, 1),
            ],
            &[("a".into(), 10 * HOUR_MS + 5), ("c".into(), 9 * HOUR_MS)],
            &[("b".into(), -3), ("b".into(), 7_200_000)],
        );
        assert_eq!(rows["a"].received, vec![5, 0, 2]);
        assert_eq!(rows["a"].rejected, vec![0, 0, 1]);
        assert_eq!(rows["b"].delays, vec![0, 7_200_000]);
        assert_eq!(rows["c"].rejected, vec![0, 1, 0]);
        let f = figures(&rows["b"]);
        assert_eq!(f["delay"]["p90Hours"], json!(2.0));
        assert_eq!(f["received"], json!(1));
    }
}

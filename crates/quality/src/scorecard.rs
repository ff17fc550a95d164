//! Quality scorecards (质控评分): the arithmetic behind the per-institution, per-day,
//! per-type report and its roll-ups to district and region. The server gathers the samples
//! (accepted resources, rejected submissions, rule findings, reconciliation gaps); everything
//! that is counted or ranked is computed here so that it can be tested on known numbers.
//!
//! Dimensions (seed 002: 及时性、完整性、准确性、逻辑性):
//! - timeliness: clinical time → received, median and p90, share later than the deadline;
//! - completeness: share of resources with every data-set element, and the share of
//!   recommended elements filled;
//! - validity: per rule, the share of submissions it passed (rejections count as failures);
//! - consistency: share of resources without a logic finding (dates, ID vs birth date,
//!   encounter patient);
//! - duplicates and reconciliation gaps.

use std::collections::BTreeMap;

use serde::Serialize;

/// Rules whose findings are inconsistencies between elements rather than invalid values.
pub const CONSISTENCY_RULES: &[&str] = &[
    "birth-date-id",
    "period-order",
    "clinical-time",
    "encounter-subject",
];

/// One accepted resource, as the scorecard needs it.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Received minus clinical time (ms), when the resource has a clinical time.
    pub delay_ms: Option<i64>,
    /// Every element of the platform's data set present.
    pub complete: bool,
    /// Recommended elements present / expected.
    pub recommended: (u32, u32),
    /// The rules that recorded a finding on it.
    pub findings: Vec<String>,
}

/// The counts one scorecard cell adds up; merged for roll-ups.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub received: u64,
    pub rejected: u64,
    delays: Vec<i64>,
    late: u64,
    complete: u64,
    rec_filled: u64,
    rec_expected: u64,
    inconsistent: u64,
    duplicates: u64,
    /// Accepted resources with at least one finding.
    flagged: u64,
    /// Rule → submissions it failed (accepted with a finding, or rejected).
    failed: BTreeMap<String, u64>,
    pub reconciliation_gaps: u64,
    pub reconciliations: u64,
}

impl Tally {
    pub fn add(&mut self, s: &Sample, late_ms: i64) {
        self.received += 1;
        if let Some(d) = s.delay_ms {
            self.delays.push(d.max(0));
            if d > late_ms {
                self.late += 1;
            }
        }
        self.complete += s.complete as u64;
        self.rec_filled += s.recommended.0 as u64;
        self.rec_expected += s.recommended.1 as u64;
        let mut rules: Vec<&str> = s.findings.iter().map(String::as_str).collect();
        rules.sort_unstable();
        rules.dedup();
        self.flagged += !rules.is_empty() as u64;
        if rules.iter().any(|r| CONSISTENCY_RULES.contains(r)) {
            self.inconsistent += 1;
        }
        if rules.contains(&"duplicate") {
            self.duplicates += 1;
        }
        for r in rules {
            *self.failed.entry(r.to_string()).or_default() += 1;
        }
    }

    /// A rejected submission of one resource and the rules that rejected it.
    pub fn reject(&mut self, rules: &[&str]) {
        self.rejected += 1;
        let mut rules = rules.to_vec();
        rules.sort_unstable();
        rules.dedup();
        for r in rules {
            *self.failed.entry(r.to_string()).or_default() += 1;
        }
    }

    pub fn merge(&mut self, o: &Tally) {
        self.received += o.received;
        self.rejected += o.rejected;
        self.delays.extend_from_slice(&o.delays);
        self.late += o.late;
        self.complete += o.complete;
        self.rec_filled += o.rec_filled;
        self.rec_expected += o.rec_expected;
        self.inconsistent += o.inconsistent;
        self.duplicates += o.duplicates;
        self.flagged += o.flagged;
        for (r, n) in &o.failed {
            *self.failed.entry(r.clone()).or_default() += n;
        }
        self.reconciliation_gaps += o.reconciliation_gaps;
        self.reconciliations += o.reconciliations;
    }

    /// The figures of this cell.
    pub fn card(&self) -> Card {
        let mut delays = self.delays.clone();
        delays.sort_unstable();
        let submitted = self.received + self.rejected;
        let share = |n: u64, of: u64| {
            if of == 0 {
                None
            } else {
                Some(n as f64 / of as f64)
            }
        };
        let validity: BTreeMap<String, f64> = self
            .failed
            .iter()
            .map(|(r, n)| (r.clone(), 1.0 - *n as f64 / submitted.max(1) as f64))
            .collect();
        let passed_all = submitted.saturating_sub(self.rejected + self.flagged);
        let timeliness = Timeliness {
            measured: delays.len() as u64,
            median_hours: percentile(&delays, 50.0).map(hours),
            p90_hours: percentile(&delays, 90.0).map(hours),
            late_share: share(self.late, delays.len() as u64),
        };
        let completeness = Completeness {
            required: share(self.complete, self.received),
            recommended: share(self.rec_filled, self.rec_expected),
        };
        let valid = share(passed_all, submitted);
        let consistency = share(self.received - self.inconsistent, self.received);
        let duplicate_rate = share(self.duplicates, self.received);
        // The overall score: the mean of the dimensions that could be measured, ×100.
        let parts: Vec<f64> = [
            timeliness.late_share.map(|l| 1.0 - l),
            completeness.required,
            valid,
            consistency,
            duplicate_rate.map(|d| 1.0 - d),
        ]
        .into_iter()
        .flatten()
        .collect();
        let score = (!parts.is_empty())
            .then(|| round1(100.0 * parts.iter().sum::<f64>() / parts.len() as f64));
        Card {
            received: self.received,
            rejected: self.rejected,
            timeliness,
            completeness,
            validity: Validity {
                pass_rate: valid,
                by_rule: validity,
            },
            consistency,
            duplicate_rate,
            reconciliations: self.reconciliations,
            reconciliation_gaps: self.reconciliation_gaps,
            score,
        }
    }
}

/// How quickly data arrived.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Timeliness {
    /// Resources with a clinical time.
    pub measured: u64,
    pub median_hours: Option<f64>,
    pub p90_hours: Option<f64>,
    /// Share that arrived later than the deadline.
    pub late_share: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Completeness {
    pub required: Option<f64>,
    pub recommended: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Validity {
    /// Share of submissions without any finding.
    pub pass_rate: Option<f64>,
    /// Rule → share of submissions it passed (rules that never failed are left out).
    pub by_rule: BTreeMap<String, f64>,
}

/// The figures of one institution (or district, or the region) for a period or a day.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Card {
    pub received: u64,
    pub rejected: u64,
    pub timeliness: Timeliness,
    pub completeness: Completeness,
    pub validity: Validity,
    pub consistency: Option<f64>,
    pub duplicate_rate: Option<f64>,
    pub reconciliations: u64,
    pub reconciliation_gaps: u64,
    /// 0–100: the mean of the measured dimensions.
    pub score: Option<f64>,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn hours(ms: i64) -> f64 {
    round1(ms as f64 / 3_600_000.0)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn sample(delay_h: Option<i64>, complete: bool, rec: (u32, u32), f: &[&str]) -> Sample {
        Sample {
            delay_ms: delay_h.map(|h| h * H),
            complete,
            recommended: rec,
            findings: f.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&v, 50.0), Some(5));
        assert_eq!(percentile(&v, 90.0), Some(9));
        assert_eq!(percentile(&v, 100.0), Some(10));
        assert_eq!(percentile(&[7], 90.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_card_adds_up() {
        let mut t = Tally::default();
        t.add(&sample(Some(1), true, (2, 4), &[]), 24 * H);
        t.add(&sample(Some(2), true, (4, 4), &["duplicate"]), 24 * H);
        t.add(
            &sample(Some(30), false, (0, 4), &["data-set", "period-order"]),
            24 * H,
        );
        t.add(&sample(None, true, (0, 0), &[]), 24 * H);
        t.reject(&["value-plausible", "value-plausible"]);
        let c = t.card();
        assert_eq!((c.received, c.rejected), (4, 1));
        assert_eq!(c.timeliness.measured, 3);
        assert_eq!(c.timeliness.median_hours, Some(2.0));
        assert_eq!(c.timeliness.p90_hours, Some(30.0));
        assert_eq!(c.timeliness.late_share, Some(1.0 / 3.0));
        assert_eq!(c.completeness.required, Some(0.75));
        assert_eq!(c.completeness.recommended, Some(0.5));
        // 5 submissions: 2 passed clean, 2 accepted with findings, 1 rejected.
        assert_eq!(c.validity.pass_rate, Some(0.4));
        assert_eq!(c.validity.by_rule["value-plausible"], 0.8);
        assert_eq!(c.validity.by_rule["data-set"], 0.8);
        assert!(!c.validity.by_rule.contains_key("structure"));
        assert_eq!(c.consistency, Some(0.75));
        assert_eq!(c.duplicate_rate, Some(0.25));
        // mean of (1 - 1/3, 0.75, 0.4, 0.75, 0.75) × 100 = 66.3
        assert_eq!(c.score, Some(66.3));
    }

    #[test]
    fn roll_ups_recompute_percentiles_from_every_delay() {
        let mut a = Tally::default();
        let mut b = Tally::default();
        for h in [1, 2, 3] {
            a.add(&sample(Some(h), true, (0, 0), &[]), 24 * H);
        }
        for h in [100, 200] {
            b.add(&sample(Some(h), true, (0, 0), &[]), 24 * H);
        }
        let mut region = Tally::default();
        region.merge(&a);
        region.merge(&b);
        let c = region.card();
        assert_eq!(c.received, 5);
        assert_eq!(c.timeliness.median_hours, Some(3.0));
        assert_eq!(c.timeliness.late_share, Some(0.4));
    }

    #[test]
    fn an_empty_cell_has_no_score() {
        let c = Tally::default().card();
        assert_eq!(c.score, None);
        assert_eq!(c.validity.pass_rate, None);
    }
}

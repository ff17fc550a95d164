//! Fellegi–Sunter: for each field and level, m = P(level | same person) and
//! u = P(level | different people). u is measured on random pairs (almost all of which are
//! different people); m and the match prevalence are estimated by EM over the candidate
//! pairs, so the model learns from the data itself. Exact name agreement is weighted by the
//! name's own frequency (term-frequency adjustment): 张伟 agreeing says less than 欧阳雪.

use std::collections::HashMap;

use crate::compare::{
    compare_with, known_apart, Pattern, Profile, BIRTH, CONTACT, FIELDS, ID, LEVELS, MAX_LEVELS,
    NAME,
};

use crate::normalize::Record;

/// A pattern with one field set.
fn one(field: usize, level: u8) -> Pattern {
    let mut p: Pattern = [None; FIELDS];
    p[field] = Some(level);
    p
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Model {
    /// The fields this model compares on.
    pub profile: Profile,
    // The full path: serde's derive declares a `FIELDS` of its own in the same scope.
    pub m: [[f64; MAX_LEVELS]; crate::compare::FIELDS],
    pub u: [[f64; MAX_LEVELS]; crate::compare::FIELDS],
    /// Estimated share of candidate pairs that are matches.
    pub p: f64,
    /// Records per exact normalised name, and the record count, for term frequencies. Not
    /// kept with a stored model: an index in the database counts names itself.
    #[serde(skip)]
    name_counts: HashMap<String, u32>,
    #[serde(skip)]
    n: f64,
    /// Family and given names counted apart (records per part, of how many): a full name's
    /// frequency in the population is estimated from its parts, which a region's data shows
    /// far better than the full names a small store happens to hold.
    #[serde(default)]
    parts: NameParts,
    pub em_iterations: usize,
}

/// The chance that two people of a region share a birth date: births spread over the days
/// of about 75 years of living cohorts. (Not the model's `u`, which counts random pairs of
/// records — in a small store, many of them one person's two records.)
const BIRTHDAY: f64 = 1.0 / (365.25 * 75.0);

/// A city of millions, unless the deployment says otherwise.
pub const DEFAULT_POPULATION: f64 = 10_000_000.0;

/// A family name the published table does not list, in a store too small to count.
const RARE_FAMILY: f64 = 1e-3;
/// A given name's share in a store too small to count: the most common given names are
/// borne by about 0.3 % of people, most by far fewer.
const GIVEN: f64 = 1e-3;

/// Records per family name and per given name, of how many named records.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct NameParts {
    family: HashMap<String, u32>,
    given: HashMap<String, u32>,
    n: u32,
}

impl NameParts {
    /// Counts people rather than records: a person registered at four institutions is four
    /// records but one bearer of the name, so records that agree on name and birth date are
    /// counted once.
    fn count(records: &[Record]) -> NameParts {
        let mut p = NameParts::default();
        let mut seen = std::collections::HashSet::new();
        for r in records {
            let Some(n) = &r.name else { continue };
            if let (Some(f), Some(g)) = (&n.family, &n.given) {
                if !seen.insert((n.text.as_str(), r.birth)) {
                    continue;
                }
                *p.family.entry(f.clone()).or_default() += 1;
                *p.given.entry(g.clone()).or_default() += 1;
                p.n += 1;
            }
        }
        p
    }

    /// The share of people bearing a name made of these parts, as if family and given names
    /// were chosen independently: the family name's from the published statistics where
    /// they know it, the given name's from the records (given names are shared across
    /// families, so even a small region shows how common one is). The record itself is not
    /// counted; an unseen part counts as seen once.
    fn share(&self, family: &str, given: &str) -> f64 {
        let n = f64::from(self.n);
        let counted = self.n >= 100;
        let others =
            |c: Option<&u32>| f64::from(c.copied().unwrap_or(0).saturating_sub(1).max(1)) / n;
        let f = match hutong_cn::names::surname_share(family) {
            Some(f) => f,
            None if counted => others(self.family.get(family)),
            None => RARE_FAMILY,
        };
        let g = if counted {
            others(self.given.get(given))
        } else {
            GIVEN
        };
        f * g
    }
}

/// A deterministic generator for sampling random pairs (SplitMix64).
struct Sampler(u64);

impl Sampler {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// What the data itself says about a pair before any weighing: the same valid ID number
/// (one person), two valid different ones or twins (two people), or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Known {
    Unknown,
    Same,
    Apart,
}

fn known(a: &Record, b: &Record) -> Known {
    match (&a.id_number, &b.id_number) {
        (Some(x), Some(y)) if x.valid && y.valid && x.text == y.text => Known::Same,
        _ if known_apart(a, b) => Known::Apart,
        _ => Known::Unknown,
    }
}

fn count_patterns(
    patterns: impl Iterator<Item = (Pattern, Known)>,
) -> Vec<((Pattern, Known), f64)> {
    let mut h: HashMap<(Pattern, Known), f64> = HashMap::new();
    for p in patterns {
        *h.entry(p).or_default() += 1.0;
    }
    let mut v: Vec<((Pattern, Known), f64)> = h.into_iter().collect();
    v.sort_by_key(|a| a.0);
    v
}

impl Model {
    /// Trains on the records and the candidate pairs that blocking produced.
    pub fn train(records: &[Record], candidates: &[(u32, u32)], profile: Profile) -> Model {
        let mut name_counts: HashMap<String, u32> = HashMap::new();
        for r in records {
            if let Some(n) = &r.name {
                *name_counts.entry(n.text.clone()).or_default() += 1;
            }
        }
        // u from random pairs, with add-one smoothing so no level is impossible.
        let mut u = [[1.0; MAX_LEVELS]; FIELDS];
        let n = records.len();
        if n >= 2 {
            let mut s = Sampler(0x5EED);
            let samples = 200_000.min(n * (n - 1) / 2).max(1);
            for _ in 0..samples {
                let (a, b) = (s.next(n), s.next(n));
                if a == b {
                    continue;
                }
                let p = compare_with(&records[a], &records[b], profile);
                for f in 0..FIELDS {
                    if let Some(l) = p[f] {
                        u[f][l as usize] += 1.0;
                    }
                }
            }
        }
        normalise(&mut u);

        // m by EM with u fixed, starting from "matches mostly agree".
        let mut m = [[0.0; MAX_LEVELS]; FIELDS];
        for (row, &k) in m.iter_mut().zip(LEVELS.iter()) {
            for (l, x) in row.iter_mut().take(k).enumerate() {
                *x = if l == k - 1 {
                    0.9
                } else {
                    0.1 / (k - 1) as f64
                };
            }
        }
        // Semi-supervised EM: pairs whose status the ID numbers (or the twins rule) settle
        // keep it; EM weighs the rest. Without these anchors EM drifts towards "same name,
        // same household" — namesakes and relatives — instead of "same person".
        let patterns = count_patterns(candidates.iter().map(|&(a, b)| {
            let (ra, rb) = (&records[a as usize], &records[b as usize]);
            (compare_with(ra, rb, profile), known(ra, rb))
        }));
        let mut p: f64 = 0.3;
        let mut iterations = 0;
        for it in 0..100 {
            iterations = it + 1;
            let mut mm = [[0.0; MAX_LEVELS]; FIELDS];
            let mut total_g = 0.0;
            let mut total = 0.0;
            for ((pat, k), count) in &patterns {
                let (mut lm, mut lu) = (p.ln(), (1.0 - p).ln());
                // Whether a pair is one person is judged on the person's own fields; contact
                // details are shared by households, so they are estimated from that judgement
                // but do not drive it (else EM learns "household", not "person").
                for f in 0..FIELDS {
                    if f == CONTACT {
                        continue;
                    }
                    if let Some(l) = pat[f] {
                        lm += m[f][l as usize].max(1e-12).ln();
                        lu += u[f][l as usize].ln();
                    }
                }
                let g = match k {
                    Known::Same => 1.0,
                    Known::Apart => 0.0,
                    Known::Unknown => 1.0 / (1.0 + (lu - lm).exp()),
                };
                total_g += g * count;
                total += count;
                for f in 0..FIELDS {
                    if let Some(l) = pat[f] {
                        mm[f][l as usize] += g * count;
                    }
                }
            }
            for row in mm.iter_mut() {
                for x in row.iter_mut() {
                    *x += 1e-3;
                }
            }
            normalise(&mut mm);
            // A candidate set is never all matches; bounding p keeps EM off that degenerate fixpoint.
            let new_p = (total_g / total.max(1.0)).clamp(1e-4, 0.95);
            let delta = (new_p - p).abs()
                + mm.iter()
                    .zip(m.iter())
                    .map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>())
                    .sum::<f64>();
            m = mm;
            p = new_p;
            if delta < 1e-6 {
                break;
            }
        }
        for (f, row) in m.iter_mut().enumerate() {
            for x in row.iter_mut().skip(LEVELS[f]) {
                *x = 0.0;
            }
        }
        Model {
            profile,
            m,
            u,
            p,
            name_counts,
            n: n.max(1) as f64,
            parts: NameParts::count(records),
            em_iterations: iterations,
        }
    }

    /// Starting values for a store too small to learn from: typical agreement rates of the
    /// same person (m) and of different people (u) per level, of the order EM finds on a
    /// synthetic region. They are replaced by EM's estimates once there is data.
    pub fn starting() -> Model {
        let mut m = [[0.0; MAX_LEVELS]; FIELDS];
        let mut u = [[0.0; MAX_LEVELS]; FIELDS];
        let rows: [(&[f64], &[f64]); 5] = [
            (&[0.01, 0.04, 0.95], &[0.9998, 1.9e-4, 1e-5]),
            (
                &[0.005, 0.01, 0.03, 0.05, 0.905],
                &[0.97, 0.025, 0.004, 8e-4, 2e-4],
            ),
            (&[0.005, 0.01, 0.03, 0.955], &[0.93, 0.0659, 0.004, 1e-4]),
            (&[0.01, 0.99], &[0.5, 0.5]),
            (&[0.05, 0.25, 0.35, 0.35], &[0.9, 0.09, 0.009, 0.001]),
        ];
        for (f, (mr, ur)) in rows.iter().enumerate() {
            m[f][..mr.len()].copy_from_slice(mr);
            u[f][..ur.len()].copy_from_slice(ur);
        }
        Model {
            profile: Profile::Chinese,
            m,
            u,
            p: 0.5,
            name_counts: HashMap::new(),
            n: 1.0,
            parts: NameParts::default(),
            em_iterations: 0,
        }
    }

    /// log2 likelihood ratio of one field's level.
    pub fn weight(&self, field: usize, level: u8) -> f64 {
        (self.m[field][level as usize].max(1e-9) / self.u[field][level as usize].max(1e-9)).log2()
    }

    /// The pair's match weight: the sum of field weights, with the exact-name weight taken
    /// from that name's frequency among the records the model was trained on.
    pub fn score(&self, a: &Record, pattern: &Pattern) -> f64 {
        self.score_counted(pattern, self.name_count(a))
    }

    /// How many of the training records carry `a`'s exact name, of how many.
    pub fn name_count(&self, a: &Record) -> Option<(f64, f64)> {
        a.name
            .as_ref()
            .and_then(|n| self.name_counts.get(&n.text))
            .map(|&c| (f64::from(c), self.n))
    }

    /// The pair's match weight with the exact-name weight from `name`: how many records
    /// carry the first record's name, of how many (`None`: the field's own weight).
    pub fn score_counted(&self, pattern: &Pattern, name: Option<(f64, f64)>) -> f64 {
        let mut w = 0.0;
        for (f, level) in pattern.iter().enumerate() {
            let Some(l) = *level else { continue };
            if f == NAME && l as usize == LEVELS[NAME] - 1 {
                if let Some((c, n)) = name.filter(|&(c, n)| c > 0.0 && n > 0.0) {
                    let u = (c / n).max(1.0 / n);
                    w += (self.m[f][l as usize].max(1e-9) / u).log2();
                    continue;
                }
            }
            w += self.weight(f, l);
        }
        w
    }

    /// log2 of the prior odds of a match among candidate pairs.
    pub fn prior(&self) -> f64 {
        (self.p / (1.0 - self.p)).log2()
    }

    /// The share of the population bearing `a`'s full (Han) name, from its family and given
    /// names' frequencies among the people the model was trained on. (Not from the full
    /// name's own count: a small store holds too few namesakes to count, and a name's
    /// records are mostly one person's.)
    pub fn name_share(&self, a: &Record) -> Option<f64> {
        let n = a.name.as_ref()?;
        match (&n.family, &n.given) {
            (Some(f), Some(g)) if n.han => Some(self.parts.share(f, g)),
            _ => None,
        }
    }

    /// The log2 posterior odds that a pair is one person, the decision every linking path
    /// shares. Fellegi–Sunter over the fields, with three corrections for what registration
    /// data is like:
    /// - household evidence (phone, address) corroborates but never decides: it counts only
    ///   when the person's own fields (ID, name, birth date, sex) already lean towards one
    ///   person, so a family member with another name is not taken for the person;
    /// - without a common ID number, name and birth date are weighed against the people the
    ///   region holds: its `population` times the chance that one of them agrees this well
    ///   (an exact name as often as it is borne). A common name born on a given day is weak
    ///   evidence in a city of millions, a rare one strong; a shared household on top is
    ///   evidence a namesake would not have;
    /// - pairs that sound rules keep apart never match (the caller checks
    ///   [`crate::compare::known_apart`]).
    pub fn odds(
        &self,
        a: &Record,
        b: &Record,
        pattern: &Pattern,
        name: Option<(f64, f64)>,
        population: f64,
    ) -> f64 {
        let han = |r: &Record| r.name.as_ref().is_some_and(|n| n.han);
        // One valid ID number on two records whose names share nothing: a card lent within
        // the household (a child registered under a parent's), not one person's two names.
        if han(a) && han(b) && pattern[ID] == Some(LEVELS[ID] as u8 - 1) && pattern[NAME] == Some(0)
        {
            let mut without = *pattern;
            without[ID] = None;
            return self.odds(a, b, &without, name, population);
        }
        let mut own = self.prior();
        let mut others = 0.0;
        let mut household = 0.0;
        for (f, level) in pattern.iter().enumerate() {
            let Some(l) = *level else { continue };
            let w = if f == NAME {
                self.score_counted(&one(f, l), name)
            } else {
                self.weight(f, l)
            };
            if f == CONTACT {
                household = w;
            } else {
                own += w;
                if f != NAME && f != BIRTH {
                    others += w;
                }
            }
        }
        let with_household = |own: f64| {
            if household > 0.0 && own <= 0.0 {
                own
            } else {
                own + household
            }
        };
        let mut odds = with_household(own);
        let exact = |f: usize| pattern[f] == Some(LEVELS[f] as u8 - 1);
        // The same name in another script (张伟 and "Zhang Wei") has the Han one's namesakes.
        let transliterated = match (&a.name, &b.name) {
            (Some(x), Some(y)) if x.han != y.han => x.py.iter().any(|p| y.py.contains(p)),
            _ => false,
        };
        let same_name = exact(NAME) || transliterated;
        // (A near name with an exact birth date is left to the fields' own weights: homophones
        // and typing errors in names are the commonest deviation of one person's records.
        // So is a record without a name, a newborn's before it has one.)
        let near_name = matches!(pattern[NAME], Some(l) if l > 0) && !same_name;
        let weighed = pattern[NAME].is_some() && !(near_name && exact(BIRTH));
        if self.profile == Profile::Chinese && !exact(ID) && weighed {
            // The pair as if drawn from the whole region: how many of its people would agree
            // with this record on name and birth date this well by chance (an exact name as
            // often as the name is borne; an exact birth date on one day of the cohorts'),
            // against how often one person's two records do.
            let term = |f: usize, same: bool, chance: f64| match pattern[f] {
                Some(l) if same => (self.m[f][l as usize], chance),
                Some(l) => (self.m[f][l as usize], self.u[f][l as usize]),
                None => (1.0, 1.0),
            };
            let share = if same_name {
                self.name_share(if han(a) { a } else { b })
            } else {
                Some(1.0)
            };
            if let Some(share) = share {
                let (m_name, u_name) = term(NAME, same_name, share);
                let (m_birth, u_birth) = term(BIRTH, exact(BIRTH), BIRTHDAY);
                let evidence =
                    (m_name.max(1e-9) * m_birth.max(1e-9) / (u_name * u_birth).max(1e-300)).log2();
                // A namesake would also have to share the household to look like this: its
                // evidence counts in full here.
                let city = evidence - population.max(1.0).log2() + others + household;
                odds = odds.min(city);
            }
        }
        odds
    }
}

fn normalise(t: &mut [[f64; MAX_LEVELS]; FIELDS]) {
    for (f, row) in t.iter_mut().enumerate() {
        let s: f64 = row[..LEVELS[f]].iter().sum();
        if s > 0.0 {
            for x in row[..LEVELS[f]].iter_mut() {
                *x /= s;
            }
        }
    }
}

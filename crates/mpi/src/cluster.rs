//! Decisions and clusters: pairs at or above the link threshold are joined, strongest first,
//! unless that would put two valid, different ID numbers in one person (so a chain of weak
//! links can never merge two people who are known apart); pairs between the thresholds that
//! end up in different persons go to the review queue.

use crate::compare::{compare_with, known_apart};
use crate::model::Model;
use crate::normalize::Record;

#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// log2 posterior odds at or above which a pair is linked automatically.
    pub link: f64,
    /// log2 posterior odds at or above which an unlinked pair is queued for review.
    pub review: f64,
    /// How much better (log2 odds) the best candidate must be than a candidate known to be
    /// someone else for a record to link: a record that fits two different people about
    /// equally well belongs to neither until a person decides.
    pub margin: f64,
    /// People in the region the records are drawn from: how many namesakes a common name
    /// and birth date can be expected to have there ([`crate::Model::odds`]).
    pub population: f64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            link: 8.0,
            review: -2.0,
            margin: 6.0,
            population: crate::model::DEFAULT_POPULATION,
        }
    }
}

impl Thresholds {
    /// The thresholds for a data set of this profile. The Western profile weighs name and
    /// address parts as separate fields although they are not independent (a postcode all
    /// but fixes the state and the locality; a family shares surname and address), so its
    /// posterior odds run far higher than the evidence warrants: a shared surname and
    /// postcode alone reach 2¹⁵. Its thresholds were set on the FEBRL data sets (no false
    /// link on FEBRL 3 from 16 up); see docs/BENCHMARKS.md.
    pub fn for_profile(profile: crate::compare::Profile) -> Thresholds {
        match profile {
            crate::compare::Profile::Chinese => Thresholds::default(),
            // Review keeps the Chinese profile's distance below the link threshold.
            crate::compare::Profile::Western => Thresholds {
                link: 20.0,
                review: 10.0,
                ..Thresholds::default()
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScoredPair {
    pub a: u32,
    pub b: u32,
    /// log2 posterior odds.
    pub odds: f64,
}

pub struct Clustering {
    /// Cluster number per record (the smallest record index in the cluster).
    pub cluster: Vec<u32>,
    pub review: Vec<ScoredPair>,
    pub linked_pairs: usize,
    pub refused_conflicts: usize,
}

struct Sets {
    parent: Vec<u32>,
    /// Valid ID numbers known in each root's cluster.
    ids: Vec<Vec<String>>,
}

impl Sets {
    fn find(&mut self, x: u32) -> u32 {
        let mut r = x;
        while self.parent[r as usize] != r {
            r = self.parent[r as usize];
        }
        let mut c = x;
        while self.parent[c as usize] != r {
            let next = self.parent[c as usize];
            self.parent[c as usize] = r;
            c = next;
        }
        r
    }
}

pub fn score_pairs(
    records: &[Record],
    model: &Model,
    candidates: &[(u32, u32)],
    population: f64,
) -> Vec<ScoredPair> {
    candidates
        .iter()
        .map(|&(a, b)| {
            let (ra, rb) = (&records[a as usize], &records[b as usize]);
            let odds = if known_apart(ra, rb) {
                f64::NEG_INFINITY
            } else {
                model.odds(
                    ra,
                    rb,
                    &compare_with(ra, rb, model.profile),
                    model.name_count(ra),
                    population,
                )
            };
            ScoredPair { a, b, odds }
        })
        .collect()
}

/// The records that fit two people known to be different (their own valid ID numbers, the
/// twins or generations rules) about equally well: a best candidate at or above the link
/// threshold, and a rival within `margin` of it (linkable or not) known apart from it.
pub fn ambiguous(records: &[Record], pairs: &[ScoredPair], t: Thresholds) -> Vec<bool> {
    let mut best: Vec<Vec<(u32, f64)>> = vec![Vec::new(); records.len()];
    for p in pairs.iter().filter(|p| p.odds >= t.link - t.margin) {
        best[p.a as usize].push((p.b, p.odds));
        best[p.b as usize].push((p.a, p.odds));
    }
    best.iter_mut()
        .map(|c| {
            if c.len() < 2 {
                return false;
            }
            c.sort_by(|x, y| y.1.total_cmp(&x.1));
            let (top, odds) = c[0];
            if odds < t.link {
                return false;
            }
            c[1..].iter().any(|&(other, o)| {
                o > odds - t.margin && known_apart(&records[top as usize], &records[other as usize])
            })
        })
        .collect()
}

pub fn cluster(records: &[Record], mut pairs: Vec<ScoredPair>, t: Thresholds) -> Clustering {
    let n = records.len();
    // An ambiguous record links to no one: its pairs go to review, so that no two people
    // are ever joined through it.
    let unsure = ambiguous(records, &pairs, t);
    let mut sets = Sets {
        parent: (0..n as u32).collect(),
        ids: records
            .iter()
            .map(|r| match &r.id_number {
                Some(id) if id.valid => vec![id.text.clone()],
                _ => Vec::new(),
            })
            .collect(),
    };
    pairs.sort_by(|x, y| y.odds.total_cmp(&x.odds).then((x.a, x.b).cmp(&(y.a, y.b))));
    let mut linked = 0;
    let mut refused = 0;
    let mut review = Vec::new();
    for p in pairs {
        if p.odds < t.review {
            break;
        }
        let (ra, rb) = (sets.find(p.a), sets.find(p.b));
        if ra == rb {
            continue;
        }
        if p.odds < t.link || unsure[p.a as usize] || unsure[p.b as usize] {
            review.push(p);
            continue;
        }
        let conflict = sets.ids[ra as usize]
            .iter()
            .any(|x| sets.ids[rb as usize].iter().any(|y| x != y));
        if conflict {
            refused += 1;
            review.push(p);
            continue;
        }
        let (keep, gone) = if ra < rb { (ra, rb) } else { (rb, ra) };
        sets.parent[gone as usize] = keep;
        let moved = std::mem::take(&mut sets.ids[gone as usize]);
        for id in moved {
            if !sets.ids[keep as usize].contains(&id) {
                sets.ids[keep as usize].push(id);
            }
        }
        linked += 1;
    }
    // Review pairs whose records were joined later are settled.
    review.retain(|p| sets.find(p.a) != sets.find(p.b));
    let cluster = (0..n as u32).map(|i| sets.find(i)).collect();
    Clustering {
        cluster,
        review,
        linked_pairs: linked,
        refused_conflicts: refused,
    }
}

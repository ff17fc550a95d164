//! Verification of the audit trail (`hutong audit verify`): every partition's chain is
//! walked from its first entry; each entry's hash is recomputed from its content and the
//! previous hash, sequence numbers must follow without gaps, the recorded head must be the
//! last entry, and every checkpoint must carry a valid signature over an entry that is still
//! there, unchanged.

use std::fmt;

use hutong_store::audit::{chain_hash, GENESIS};
use hutong_store::{Store, StoreError};

/// Checks a checkpoint signature: key id, signed message, signature.
pub type Verifier<'a> = &'a dyn Fn(&str, &[u8], &[u8]) -> bool;

/// Something wrong with the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The entry's content (or its stored hash) was changed.
    Altered { part: i64, seq: i64 },
    /// Entries `from..=to` are missing.
    Deleted { part: i64, from: i64, to: i64 },
    /// The entry does not follow from the one before it: inserted, or the entry before was
    /// rewritten with a recomputed hash.
    Inserted { part: i64, seq: i64 },
    /// The recorded head is not the last entry.
    Head {
        part: i64,
        head_seq: i64,
        last_seq: i64,
    },
    /// A checkpoint's signature is invalid or its key unknown.
    BadSignature { part: i64, seq: i64 },
    /// The entry a checkpoint pinned is gone or differs: the chain up to it was rewritten.
    Rewritten { part: i64, seq: i64 },
    /// A checkpoint a witness copied is no longer in the store, or differs there.
    Unwitnessed { part: i64, seq: i64 },
}

impl Problem {
    fn position(&self) -> (i64, i64) {
        match *self {
            Problem::Altered { part, seq }
            | Problem::Inserted { part, seq }
            | Problem::BadSignature { part, seq }
            | Problem::Rewritten { part, seq }
            | Problem::Unwitnessed { part, seq } => (part, seq),
            Problem::Deleted { part, from, .. } => (part, from),
            Problem::Head {
                part,
                head_seq,
                last_seq,
            } => (part, head_seq.min(last_seq) + 1),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Altered { part, seq } => write!(
                f,
                "entry {part}/{seq} was altered: its content no longer matches its hash"
            ),
            Problem::Deleted { part, from, to } if from == to => {
                write!(f, "entry {part}/{from} was deleted")
            }
            Problem::Deleted { part, from, to } => {
                write!(f, "entries {part}/{from} to {part}/{to} were deleted")
            }
            Problem::Inserted { part, seq } => write!(
                f,
                "entry {part}/{seq} does not follow from the entry before it: it was inserted, \
                 or the entry before it was rewritten"
            ),
            Problem::Head {
                part,
                head_seq,
                last_seq,
            } if head_seq > last_seq => write!(
                f,
                "entries {part}/{} to {part}/{head_seq} were deleted from the end of the trail",
                last_seq + 1
            ),
            Problem::Head {
                part,
                head_seq,
                last_seq,
            } => write!(
                f,
                "entries {part}/{} to {part}/{last_seq} were inserted after the recorded end of the trail",
                head_seq + 1
            ),
            Problem::BadSignature { part, seq } => write!(
                f,
                "the checkpoint at entry {part}/{seq} has an invalid signature"
            ),
            Problem::Rewritten { part, seq } => write!(
                f,
                "entry {part}/{seq} differs from the signed checkpoint: the trail up to it was rewritten"
            ),
            Problem::Unwitnessed { part, seq } => write!(
                f,
                "the checkpoint at entry {part}/{seq} that a witness holds is missing or different in the store: checkpoints were removed or replaced"
            ),
        }
    }
}

/// What verification found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub partitions: usize,
    pub entries: u64,
    pub checkpoints: usize,
    /// Entries after the last checkpoint of their partition (protected by the chain and
    /// head, not yet by a signature).
    pub unsigned: u64,
    /// Every problem, in trail order; the first is the first thing that went wrong.
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// Intact, and every entry covered by a signed checkpoint. Entries after the last
    /// checkpoint are protected by the chain alone: whoever can write the database can
    /// change, remove or append them and recompute the chain, so they are unproven.
    pub fn proven(&self) -> bool {
        self.intact() && self.unsigned == 0
    }
}

/// Checks the store's checkpoints against a witness's copy of them (as
/// [`crate::checkpoint::published`] gave it): each must still be there, unchanged. Adds what
/// differs to `report`.
pub fn against_witness(
    store: &Store,
    witness: &[serde_json::Value],
    report: &mut Report,
) -> Result<(), StoreError> {
    let key = |c: &serde_json::Value| {
        ["part", "seq", "hash", "ts", "kid", "sig"].map(|k| c[k].to_string())
    };
    let now: std::collections::HashSet<[String; 6]> = crate::checkpoint::published(store)?
        .iter()
        .map(key)
        .collect();
    for c in witness {
        if !now.contains(&key(c)) {
            report.problems.push(Problem::Unwitnessed {
                part: c["part"].as_i64().unwrap_or(0),
                seq: c["seq"].as_i64().unwrap_or(0),
            });
        }
    }
    report.problems.sort_by_key(|p| p.position());
    report.problems.dedup();
    Ok(())
}

/// Verifies every partition.
pub fn verify(store: &Store, check_sig: Verifier<'_>) -> Result<Report, StoreError> {
    let mut report = Report::default();
    for (part, head_seq, head_hash) in store.audit_heads()? {
        report.partitions += 1;
        let mut expected = 1i64;
        let mut prev_hash: Vec<u8> = GENESIS.to_vec();
        let mut last_seq = 0i64;
        let mut last_hash: Vec<u8> = GENESIS.to_vec();
        let mut hashes: std::collections::HashMap<i64, Vec<u8>> = Default::default();
        let checkpoints = store.checkpoints(part)?;
        let pinned: std::collections::HashSet<i64> = checkpoints.iter().map(|c| c.seq).collect();
        let mut from = 1i64;
        loop {
            let rows = store.audit_rows(part, from, 5_000)?;
            let Some(last) = rows.last() else { break };
            from = last.seq + 1;
            for r in &rows {
                report.entries += 1;
                if r.seq > expected {
                    report.problems.push(Problem::Deleted {
                        part,
                        from: expected,
                        to: r.seq - 1,
                    });
                }
                let h = chain_hash(&r.prev, part, r.seq, r.ts, &r.entry);
                if h != r.hash {
                    report.problems.push(Problem::Altered { part, seq: r.seq });
                } else if r.prev != prev_hash && r.seq == expected {
                    report.problems.push(Problem::Inserted { part, seq: r.seq });
                }
                if pinned.contains(&r.seq) {
                    hashes.insert(r.seq, r.hash.clone());
                }
                prev_hash = r.hash.clone();
                expected = r.seq + 1;
                last_seq = r.seq;
                last_hash = r.hash.clone();
            }
        }
        if head_seq != last_seq || (head_hash != last_hash && last_seq > 0) {
            report.problems.push(Problem::Head {
                part,
                head_seq,
                last_seq,
            });
        }
        let mut signed_to = 0;
        for c in &checkpoints {
            report.checkpoints += 1;
            let msg = crate::checkpoint::message(c.part, c.seq, &c.hash, c.ts);
            if !check_sig(&c.kid, &msg, &c.sig) {
                report
                    .problems
                    .push(Problem::BadSignature { part, seq: c.seq });
                continue;
            }
            match hashes.get(&c.seq) {
                Some(h) if *h == c.hash => signed_to = signed_to.max(c.seq),
                // A differing entry means the trail up to it was rewritten.
                Some(_) => report
                    .problems
                    .push(Problem::Rewritten { part, seq: c.seq }),
                // Gone from the end, with the head moved back to hide it.
                None if c.seq > last_seq => report.problems.push(Problem::Deleted {
                    part,
                    from: last_seq + 1,
                    to: c.seq,
                }),
                // Gone from the middle: reported as a gap already.
                None => {}
            }
        }
        report.unsigned += (last_seq - signed_to).max(0) as u64;
    }
    report.problems.sort_by_key(|p| p.position());
    report.problems.dedup();
    Ok(report)
}

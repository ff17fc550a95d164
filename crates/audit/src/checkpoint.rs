//! Signed checkpoints: at intervals, each partition's head (sequence number and hash) is
//! signed with the platform's current signing key and recorded. A checkpoint cannot be
//! forged without the private key, so a chain rewritten from some entry on — hashes
//! recomputed to look consistent — still contradicts every checkpoint after that entry.

use hutong_store::{Checkpoint, Store, StoreError};

/// The bytes a checkpoint's signature covers.
pub fn message(part: i64, seq: i64, hash: &[u8], ts: i64) -> Vec<u8> {
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("hutong-audit-checkpoint|{part}|{seq}|{hex}|{ts}").into_bytes()
}

/// Signs with the current key: returns the key id and the signature.
pub type Signer<'a> = &'a dyn Fn(&[u8]) -> (String, Vec<u8>);

/// Checkpoints every partition whose head moved since its last checkpoint; returns how many
/// were written.
pub fn run(store: &Store, sign: Signer<'_>) -> Result<usize, StoreError> {
    let mut n = 0;
    for (part, seq, hash) in store.audit_heads()? {
        if seq == 0 {
            continue;
        }
        let last = store.checkpoints(part)?.last().map_or(0, |c| c.seq);
        if last >= seq {
            continue;
        }
        let ts = hutong_fhir::date::now_ms();
        let (kid, sig) = sign(&message(part, seq, &hash, ts));
        store.add_checkpoint(&Checkpoint {
            part,
            seq,
            hash,
            ts,
            kid,
            sig,
        })?;
        n += 1;
    }
    Ok(n)
}

/// Every checkpoint of every partition, as published for witnesses (`GET /audit/checkpoints`,
/// `hutong audit checkpoints`): hashes and signatures only, nothing about anyone. A witness
/// that keeps a copy can later prove that no signed checkpoint — and so no entry it
/// covers — was removed or replaced ([`crate::verify::against_witness`]).
pub fn published(store: &Store) -> Result<Vec<serde_json::Value>, StoreError> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for (part, _, _) in store.audit_heads()? {
        for c in store.checkpoints(part)? {
            out.push(serde_json::json!({
                "part": c.part,
                "seq": c.seq,
                "hash": hex(&c.hash),
                "ts": c.ts,
                "kid": c.kid,
                "sig": base64::engine::general_purpose::STANDARD.encode(&c.sig),
            }));
        }
    }
    Ok(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

//! Tampering with the audit trail directly in the database — editing, deleting, inserting
//! rows, rewriting the tail with recomputed hashes, forging a checkpoint — is caught by
//! verification, which names the first entry concerned. On SQLite and on PostgreSQL.

use hutong_audit::verify::{verify, Problem, Report};
use hutong_audit::{checkpoint, Entry};
use hutong_store::audit::chain_hash;
use hutong_store::sql::Val;
use hutong_store::testing::{postgres, sqlite, TestStore};
use hutong_store::Store;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite { $( #[test] fn $name() { super::$name(&super::sqlite()); } )* }
        mod on_postgres { $( #[test] fn $name() { if let Some(s) = super::postgres() { super::$name(&s); } } )* }
    };
}

both!(
    intact_trail_verifies,
    altered_entry_is_named,
    deleted_entry_is_named,
    inserted_entry_is_named,
    rewritten_tail_contradicts_the_checkpoint,
    deleted_tail_contradicts_the_checkpoint,
    forged_checkpoint_is_refused,
);

struct Keys(Ed25519KeyPair);

fn keys() -> Keys {
    let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    Keys(Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap())
}

impl Keys {
    fn checkpoint(&self, s: &Store) {
        let sign = |m: &[u8]| ("k1".to_string(), self.0.sign(m).as_ref().to_vec());
        checkpoint::run(s, &sign).unwrap();
    }
    fn verify(&self, s: &Store) -> Report {
        let public = self.0.public_key().as_ref().to_vec();
        let check = move |kid: &str, m: &[u8], sig: &[u8]| {
            kid == "k1"
                && UnparsedPublicKey::new(&ED25519, &public)
                    .verify(m, sig)
                    .is_ok()
        };
        verify(s, &check).unwrap()
    }
}

/// Ten access entries about one patient (all in one partition), then a checkpoint, then
/// five more.
fn trail(s: &Store, k: &Keys) -> i64 {
    let shard = hutong_store::shard_of("p1");
    let entry = |i: usize| {
        Entry {
            ts: 1_000 + i as i64,
            action: "read".into(),
            outcome: 200,
            request: format!("GET Observation/o{i}"),
            entities: vec![format!("Observation/o{i}/_history/1")],
            subjects: vec![shard],
            ..Default::default()
        }
        .to_store()
    };
    let first: Vec<_> = (1..=10).map(entry).collect();
    s.append_audit(&first).unwrap();
    k.checkpoint(s);
    let rest: Vec<_> = (11..=15).map(entry).collect();
    s.append_audit(&rest).unwrap();
    shard.rem_euclid(hutong_store::audit::partitions(s.dialect()))
}

/// What an attacker with the database's owner rights does first: take away the triggers
/// that make the trail append-only. (That they are there is checked below.)
fn unguard(s: &Store) {
    let stmts: &[&str] = match s.dialect() {
        hutong_store::sql::Dialect::Sqlite => &[
            "DROP TRIGGER audit_no_update",
            "DROP TRIGGER audit_no_delete",
            "DROP TRIGGER audit_checkpoint_no_update",
            "DROP TRIGGER audit_checkpoint_no_delete",
        ],
        hutong_store::sql::Dialect::Postgres => &[
            "ALTER TABLE audit DISABLE TRIGGER audit_append_only",
            "ALTER TABLE audit_checkpoint DISABLE TRIGGER audit_checkpoint_append_only",
        ],
    };
    for st in stmts {
        s.exec_admin(st, &[]).unwrap();
    }
}

fn first(r: &Report) -> Problem {
    assert!(!r.intact(), "tampering went unnoticed");
    r.problems[0].clone()
}

fn intact_trail_verifies(t: &TestStore) {
    let k = keys();
    trail(&t.store, &k);
    // The database itself refuses changes to entries and checkpoints.
    for st in [
        "UPDATE audit SET entry = '{}' WHERE seq = 3",
        "DELETE FROM audit WHERE seq = 3",
        "DELETE FROM audit_checkpoint",
    ] {
        let e = t.store.exec_admin(st, &[]).unwrap_err();
        assert!(format!("{e:?}").contains("append-only"), "{st}: {e:?}");
    }
    let r = k.verify(&t.store);
    assert!(r.intact(), "{:?}", r.problems);
    assert_eq!((r.entries, r.checkpoints, r.unsigned), (15, 1, 5));
    k.checkpoint(&t.store);
    assert_eq!(k.verify(&t.store).unsigned, 0);
}

fn altered_entry_is_named(t: &TestStore) {
    let k = keys();
    let part = trail(&t.store, &k);
    unguard(&t.store);
    // Someone erases a read from the record.
    t.store
        .exec_admin(
            "UPDATE audit SET entry = REPLACE(entry, 'o7', 'o8') WHERE part = ? AND seq = 7",
            &[Val::Int(part)],
        )
        .unwrap();
    let p = first(&k.verify(&t.store));
    assert_eq!(p, Problem::Altered { part, seq: 7 });
    assert!(p.to_string().contains("altered"), "{p}");
}

fn deleted_entry_is_named(t: &TestStore) {
    let k = keys();
    let part = trail(&t.store, &k);
    unguard(&t.store);
    t.store
        .exec_admin(
            "DELETE FROM audit WHERE part = ? AND seq IN (4, 5)",
            &[Val::Int(part)],
        )
        .unwrap();
    let p = first(&k.verify(&t.store));
    assert_eq!(
        p,
        Problem::Deleted {
            part,
            from: 4,
            to: 5
        }
    );
    assert!(p.to_string().contains("deleted"));
}

fn inserted_entry_is_named(t: &TestStore) {
    let k = keys();
    let part = trail(&t.store, &k);
    unguard(&t.store);
    // Entry 12 replaced by a forged one with a hash that is right for its own content and
    // its predecessor — the next entry no longer follows from it.
    let rows = t.store.audit_rows(part, 11, 1).unwrap();
    let prev = rows[0].hash.clone();
    let forged = r#"{"ts":2000,"action":"read","outcome":200,"who":{"kind":"system","subject":"x"},"request":"GET nothing"}"#;
    let hash = chain_hash(&prev, part, 12, 2000, forged);
    t.store
        .exec_admin(
            "UPDATE audit SET entry = ?, ts = 2000, prev = ?, hash = ? WHERE part = ? AND seq = 12",
            &[
                Val::Text(forged.into()),
                Val::Blob(prev),
                Val::Blob(hash),
                Val::Int(part),
            ],
        )
        .unwrap();
    assert_eq!(
        first(&k.verify(&t.store)),
        Problem::Inserted { part, seq: 13 }
    );
    // An entry appended after the recorded end.
    let t2 = sqlite();
    let part2 = trail(&t2.store, &k);
    unguard(&t2.store);
    let last = t2.store.audit_rows(part2, 15, 1).unwrap();
    let extra = r#"{"ts":3000,"action":"read","outcome":200,"who":{"kind":"system","subject":"x"},"request":"GET x"}"#;
    let h = chain_hash(&last[0].hash, part2, 16, 3000, extra);
    t2.store
        .exec_admin(
            "INSERT INTO audit (part, seq, ts, prev, hash, entry) VALUES (?, 16, 3000, ?, ?, ?)",
            &[
                Val::Int(part2),
                Val::Blob(last[0].hash.clone()),
                Val::Blob(h),
                Val::Text(extra.into()),
            ],
        )
        .unwrap();
    let p = first(&k.verify(&t2.store));
    assert_eq!(
        p,
        Problem::Head {
            part: part2,
            head_seq: 15,
            last_seq: 16
        }
    );
    assert!(p.to_string().contains("inserted"));
}

/// Rewrites entries `from..` with new content and recomputed, consistent hashes, and moves
/// the head along: only a signed checkpoint can tell.
fn rewrite_from(s: &Store, part: i64, from: i64) {
    let rows = s.audit_rows(part, 1, 1000).unwrap();
    let mut prev = rows[(from - 2) as usize].hash.clone();
    for r in rows.iter().filter(|r| r.seq >= from) {
        let entry = r.entry.replace("Observation", "Encounter");
        let h = chain_hash(&prev, part, r.seq, r.ts, &entry);
        s.exec_admin(
            "UPDATE audit SET entry = ?, prev = ?, hash = ? WHERE part = ? AND seq = ?",
            &[
                Val::Text(entry),
                Val::Blob(prev.clone()),
                Val::Blob(h.clone()),
                Val::Int(part),
                Val::Int(r.seq),
            ],
        )
        .unwrap();
        prev = h;
    }
    s.exec_admin(
        "UPDATE audit_head SET hash = ? WHERE part = ?",
        &[Val::Blob(prev), Val::Int(part)],
    )
    .unwrap();
}

fn rewritten_tail_contradicts_the_checkpoint(t: &TestStore) {
    let k = keys();
    let part = trail(&t.store, &k);
    unguard(&t.store);
    rewrite_from(&t.store, part, 6);
    let r = k.verify(&t.store);
    assert_eq!(first(&r), Problem::Rewritten { part, seq: 10 });
    // Rewriting only what came after the last checkpoint is what the chain alone cannot
    // catch: the report says how much of the trail that is.
    let t2 = sqlite();
    let part2 = trail(&t2.store, &k);
    unguard(&t2.store);
    rewrite_from(&t2.store, part2, 12);
    let r2 = k.verify(&t2.store);
    assert!(r2.intact());
    assert_eq!(r2.unsigned, 5);
}

fn deleted_tail_contradicts_the_checkpoint(t: &TestStore) {
    let k = keys();
    let part = trail(&t.store, &k);
    unguard(&t.store);
    // Delete entries 8.. and move the head back to 7 to hide it.
    let seven = t.store.audit_rows(part, 7, 1).unwrap();
    t.store
        .exec_admin(
            "DELETE FROM audit WHERE part = ? AND seq >= 8",
            &[Val::Int(part)],
        )
        .unwrap();
    t.store
        .exec_admin(
            "UPDATE audit_head SET seq = 7, hash = ? WHERE part = ?",
            &[Val::Blob(seven[0].hash.clone()), Val::Int(part)],
        )
        .unwrap();
    assert_eq!(
        first(&k.verify(&t.store)),
        Problem::Deleted {
            part,
            from: 8,
            to: 10
        }
    );
}

fn forged_checkpoint_is_refused(t: &TestStore) {
    let k = keys();
    let part = trail(&t.store, &k);
    unguard(&t.store);
    // A checkpoint signed with another key, over a rewritten trail.
    let other = keys();
    rewrite_from(&t.store, part, 2);
    t.store
        .exec_admin(
            "DELETE FROM audit_checkpoint WHERE part = ?",
            &[Val::Int(part)],
        )
        .unwrap();
    other.checkpoint(&t.store);
    let r = k.verify(&t.store);
    assert_eq!(first(&r), Problem::BadSignature { part, seq: 15 });
}

//! Administration from the command line: `hutong audit verify` proves the trail intact and,
//! after a row is edited in the database, names the altered entry and fails; `hutong keys`
//! rotates the data key and the data stays readable.

use base64::Engine;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_hutong");

fn hutong(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("HUTONG_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn audit_verify_catches_an_edited_row_and_keys_rotate() {
    let dir = std::env::temp_dir().join(format!("hutong-admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let file = dir.join("p.ndjson");
    let mut lines = String::new();
    for i in 0..20 {
        lines.push_str(&format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"p{i}\",\"identifier\":[{{\"system\":\"urn:mrn\",\"value\":\"{i}\"}}],\"name\":[{{\"text\":\"王芳{i}\"}}]}}\n"
        ));
    }
    std::fs::write(&file, lines).unwrap();
    let imported = hutong(&data, &["import", file.to_str().unwrap()]);
    assert!(imported.status.success(), "{imported:?}");
    // Accounts made at the command line are audited too.
    let added = hutong(
        &data,
        &[
            "access",
            "add-client",
            "--id",
            "his",
            "--institution",
            "urn:hutong:org:X",
        ],
    );
    assert!(stdout(&added).contains("client_secret:"));
    let listed = hutong(&data, &["access", "clients"]);
    assert!(stdout(&listed).contains("urn:hutong:org:X"));
    // A token minted from the keyring carries the claims asked for, and the minting is audited.
    let minted = hutong(
        &data,
        &[
            "access",
            "token",
            "--kind",
            "operator",
            "--institution",
            "urn:hutong:org:X",
            "--role",
            "auditor",
        ],
    );
    assert!(minted.status.success(), "{minted:?}");
    let token = stdout(&minted).trim().to_string();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let claims = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    assert!(claims.contains("urn:hutong:org:X"), "{claims}");
    assert!(
        claims.contains("user/*.rs") && claims.contains("auditor"),
        "{claims}"
    );
    let refused = hutong(&data, &["access", "token", "--kind", "god"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--kind is system"));
    assert!(hutong(&data, &["audit", "checkpoint"]).status.success());
    let ok = hutong(&data, &["audit", "verify"]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("intact"), "{}", stdout(&ok));
    let shown = hutong(&data, &["audit", "show", "--limit", "5"]);
    assert!(stdout(&shown).contains("add-client"), "{}", stdout(&shown));
    assert!(stdout(&shown).contains("token"), "{}", stdout(&shown));

    // A new data key: everything re-encrypted under it, still readable.
    let rotated = hutong(&data, &["keys", "rotate-data"]);
    assert!(rotated.status.success(), "{rotated:?}");
    assert!(
        stdout(&rotated).contains("20 identity resources re-encrypted"),
        "{}",
        stdout(&rotated)
    );
    let out = dir.join("export");
    let exported = hutong(
        &data,
        &[
            "export",
            "--out",
            out.to_str().unwrap(),
            "--type",
            "Patient",
        ],
    );
    assert!(exported.status.success(), "{exported:?}");
    let text = std::fs::read_to_string(out.join("Patient.ndjson")).unwrap();
    assert_eq!(text.lines().count(), 20);
    assert!(text.contains("王芳7"));

    // Someone edits the trail in the database.
    {
        let store =
            hutong_store::Store::open(&hutong_store::Location::Sqlite(data.clone())).unwrap();
        // The database refuses it, so first the triggers that keep the trail append-only go.
        assert!(store
            .exec_admin("UPDATE audit SET entry = '' WHERE seq = 1", &[])
            .is_err());
        store
            .exec_admin("DROP TRIGGER audit_no_update", &[])
            .unwrap();
        let n = store
            .exec_admin(
                "UPDATE audit SET entry = REPLACE(entry, 'import', 'nothing') WHERE part = 0 AND seq = 1",
                &[],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    let bad = hutong(&data, &["audit", "verify"]);
    assert!(!bad.status.success());
    assert!(
        stdout(&bad).contains("entry 0/1 was altered"),
        "{}",
        stdout(&bad)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tail after the last signed checkpoint is not reported intact, what the command line
/// writes is signed at once, a witness's copy of the checkpoints shows removed ones, and
/// verifying where there is no store refuses instead of making one.
#[test]
fn the_audit_tail_is_signed_or_unproven_and_witnessed() {
    let dir = std::env::temp_dir().join(format!("hutong-tail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let nothing = hutong(&dir.join("empty"), &["audit", "verify"]);
    assert!(!nothing.status.success());
    assert!(
        String::from_utf8_lossy(&nothing.stderr).contains("there is no Hutong store"),
        "{nothing:?}"
    );
    assert!(
        !dir.join("empty").join("hutong.db").exists(),
        "no store was made"
    );
    // A command-line write is signed: verify proves it.
    let added = hutong(
        &data,
        &[
            "access",
            "add-client",
            "--id",
            "his-t",
            "--institution",
            "urn:hutong:org:T",
        ],
    );
    assert!(added.status.success(), "{added:?}");
    let ok = hutong(&data, &["audit", "verify"]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    let witness = hutong(&data, &["audit", "checkpoints"]);
    assert!(witness.status.success());
    let copy = dir.join("witness.json");
    std::fs::write(&copy, stdout(&witness)).unwrap();
    // Entries appended behind the platform's back are unproven, not intact.
    {
        let store =
            hutong_store::Store::open(&hutong_store::Location::Sqlite(data.clone())).unwrap();
        let e = hutong_audit::Entry {
            ts: 1,
            action: "read".into(),
            request: "forged".into(),
            ..Default::default()
        };
        store.append_audit(&[e.to_store()]).unwrap();
    }
    let tail = hutong(&data, &["audit", "verify"]);
    assert_eq!(tail.status.code(), Some(2), "{}", stdout(&tail));
    assert!(stdout(&tail).contains("UNPROVEN"), "{}", stdout(&tail));
    // Checkpoints removed (and the trail cut back to hide it) show against the witness.
    {
        let store =
            hutong_store::Store::open(&hutong_store::Location::Sqlite(data.clone())).unwrap();
        let _ = store.exec_admin("DROP TRIGGER IF EXISTS audit_checkpoint_no_delete", &[]);
        store
            .exec_admin("DELETE FROM audit_checkpoint", &[])
            .unwrap();
    }
    let w = hutong(
        &data,
        &["audit", "verify", "--witness", copy.to_str().unwrap()],
    );
    assert_eq!(w.status.code(), Some(1), "{}", stdout(&w));
    assert!(stdout(&w).contains("witness holds"), "{}", stdout(&w));
    let _ = std::fs::remove_dir_all(&dir);
}

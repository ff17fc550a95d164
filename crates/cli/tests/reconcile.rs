//! `hutong reconcile`: a source's files against what the platform holds from it — the
//! differences printed, the report and the resources to resend written.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_hutong");
const SOURCE: &str = "urn:hutong:org:91330106RC";

fn hutong(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("HUTONG_LOG", "warn")
        .output()
        .unwrap()
}

fn obs(id: &str, day: u32, value: f64) -> String {
    format!(
        "{{\"resourceType\":\"Observation\",\"id\":\"{id}\",\"status\":\"final\",\
         \"code\":{{\"coding\":[{{\"system\":\"http://loinc.org\",\"code\":\"14771-0\"}}]}},\
         \"subject\":{{\"reference\":\"Patient/rc-p\"}},\"effectiveDateTime\":\"2026-03-{day:02}T08:00:00+08:00\",\
         \"valueQuantity\":{{\"value\":{value},\"unit\":\"mmol/L\",\"system\":\"http://unitsofmeasure.org\",\"code\":\"mmol/L\"}}}}\n"
    )
}

#[test]
fn reconcile_prints_the_differences_and_writes_what_to_resend() {
    let dir = std::env::temp_dir().join(format!("hutong-reconcile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let patient = "{\"resourceType\":\"Patient\",\"id\":\"rc-p\",\"identifier\":[{\"system\":\"urn:mrn\",\"value\":\"1\"}],\"name\":[{\"text\":\"王芳\"}],\"birthDate\":\"1970-01-01\"}\n";
    // What reached the platform…
    let sent = dir.join("sent.ndjson");
    std::fs::write(
        &sent,
        format!(
            "{patient}{}{}{}",
            obs("o1", 1, 5.0),
            obs("o2", 2, 6.6),
            obs("o3", 2, 7.0)
        ),
    )
    .unwrap();
    let imported = hutong(
        &data,
        &["import", "--source", SOURCE, sent.to_str().unwrap()],
    );
    assert!(imported.status.success(), "{imported:?}");
    // …and what the source holds: o2 corrected since, o4 never sent, o3 not there.
    let held = dir.join("held.ndjson");
    std::fs::write(
        &held,
        format!(
            "{patient}{}{}{}",
            obs("o1", 1, 5.0),
            obs("o2", 2, 6.0),
            obs("o4", 3, 5.5)
        ),
    )
    .unwrap();
    let out = dir.join("recon");
    let r = hutong(
        &data,
        &[
            "reconcile",
            held.to_str().unwrap(),
            "--source",
            SOURCE,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&r.stdout).to_string();
    assert!(r.status.success(), "{r:?}");
    assert!(
        text.contains("1 matched, 1 missing on the platform, 1 extra on the platform, 1 differ"),
        "{text}"
    );
    assert!(text.contains("missing  Observation/o4"), "{text}");
    assert!(text.contains("extra    Observation/o3"), "{text}");
    assert!(text.contains("differs  Observation/o2"), "{text}");
    assert!(text.contains("Work order Task/"), "{text}");
    let resend = std::fs::read_to_string(out.join("resend.ndjson")).unwrap();
    let ids: Vec<String> = resend
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["o2", "o4"]);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["differences"]["matched"], 1);
    // A period with nothing in it is refused with a clear message.
    let bad = hutong(
        &data,
        &[
            "reconcile",
            held.to_str().unwrap(),
            "--source",
            SOURCE,
            "--from",
            "2026-04-01",
            "--to",
            "2026-03-01",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("ends"),
        "{bad:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

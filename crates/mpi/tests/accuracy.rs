//! Linkage accuracy on a generated region against its truth, and the behaviour of the
//! decisions on the cases that matter for patient safety.

use std::collections::HashMap;

use hutong_mpi::{fhir::raw_from_patient, normalize::Raw};
use serde_json::Value;

fn region_records(residents: u64, seed: u64) -> (Vec<hutong_mpi::Record>, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("hutong-mpi-acc-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = hutong_synth::Config {
        residents,
        seed,
        years: 4,
        ..hutong_synth::Config::default()
    };
    hutong_synth::generate(&cfg, &dir, &|_, _| {}).unwrap();
    let persons = std::fs::read_to_string(dir.join("truth/persons.csv")).unwrap();
    let truth: HashMap<(String, String), String> = persons
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            ((f[0].to_string(), f[1].to_string()), f[2].to_string())
        })
        .collect();
    let mut records = Vec::new();
    let mut labels = Vec::new();
    let mut insts: Vec<_> = std::fs::read_dir(dir.join("institutions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    insts.sort();
    for inst in insts {
        let code = inst.file_name().unwrap().to_string_lossy().to_string();
        let Ok(text) = std::fs::read_to_string(inst.join("Patient.ndjson")) else {
            continue;
        };
        for line in text.lines() {
            let p: Value = serde_json::from_str(line).unwrap();
            records.push(raw_from_patient(&p).normalize());
            labels.push(truth[&(code.clone(), p["id"].as_str().unwrap().to_string())].clone());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    (records, labels)
}

#[test]
fn a_synthetic_region_links_with_high_precision_and_recall() {
    let (records, truth) = region_records(3000, 11);
    let linked = hutong_mpi::link(&records, None);
    let c = hutong_mpi::eval::pairwise(&linked.clustering.cluster, &truth);
    assert!(
        c.precision() >= 0.998,
        "precision {} ({c:?})",
        c.precision()
    );
    assert!(c.recall() >= 0.99, "recall {} ({c:?})", c.recall());
    // The model learnt sensible directions: agreement raises, disagreement lowers.
    for &f in linked.model.profile.fields() {
        let top = hutong_mpi::compare::LEVELS[f] - 1;
        if f == hutong_mpi::compare::CONTACT || linked.model.u[f][top] > 0.5 {
            continue;
        }
        assert!(
            linked.model.weight(f, top as u8) > linked.model.weight(f, 0),
            "field {f}"
        );
    }
}

fn rec(name: &str, birth: &str, id: Option<&str>, phone: &str, line: &str) -> hutong_mpi::Record {
    Raw {
        name: Some(name.into()),
        birth_date: Some(birth.into()),
        id_number: id.map(String::from),
        phone: Some(phone.into()),
        address_line: Some(line.into()),
        district: Some("西湖区".into()),
        city: Some("杭州市".into()),
        ..Raw::default()
    }
    .normalize()
}

#[test]
fn sound_rules_keep_known_different_people_apart() {
    use hutong_mpi::compare::known_apart;
    let id1 = hutong_cn::idcard::make(330106, 2015, 3, 2, 11);
    let id2 = hutong_cn::idcard::make(330106, 2015, 3, 2, 13);
    // Twins: same surname, birth date, phone and address; different given names.
    let a = rec("王子涵", "2015-03-02", None, "13800138000", "文三路1号");
    let b = rec("王子轩", "2015-03-02", None, "13800138000", "文三路1号");
    assert!(known_apart(&a, &b));
    // Two valid, different ID numbers, everything else the same.
    let c = rec(
        "王子涵",
        "2015-03-02",
        Some(&id1),
        "13800138000",
        "文三路1号",
    );
    let d = rec(
        "王子涵",
        "2015-03-02",
        Some(&id2),
        "13800138000",
        "文三路1号",
    );
    assert!(known_apart(&c, &d));
    // A namesake a generation apart in the same household.
    let e = rec("沈宇", "1987-04-17", None, "13800138000", "文三路1号");
    let f = rec("沈宇", "2013-08-01", None, "13800138000", "文三路1号");
    assert!(known_apart(&e, &f));
    // The same person, one record with a mistyped ID number: not kept apart.
    let g = rec(
        "王子涵",
        "2015-03-02",
        Some(&format!("{}0", &id1[..17])),
        "13800138000",
        "文三路1号",
    );
    assert!(!known_apart(&c, &g) || id1.ends_with('0'));
    // Same valid ID: one person even if a birth date was entered a generation off.
    let h = rec(
        "王子涵",
        "1975-08-20",
        Some(&id1),
        "13800138000",
        "文三路1号",
    );
    assert!(!known_apart(&c, &h));
}

#[test]
fn clusters_never_join_two_valid_id_numbers_through_a_chain() {
    let id1 = hutong_cn::idcard::make(330106, 1980, 5, 6, 21);
    let id2 = hutong_cn::idcard::make(330106, 1980, 5, 6, 23);
    // A and C have different valid IDs; B has none and looks like both.
    let mut records = vec![
        rec("李娜", "1980-05-06", Some(&id1), "13800138000", "文三路1号"),
        rec("李娜", "1980-05-06", None, "13800138000", "文三路1号"),
        rec("李娜", "1980-05-06", Some(&id2), "13800138000", "文三路1号"),
    ];
    // Enough background for the model to learn from.
    let (bg, _) = region_records(300, 5);
    records.extend(bg);
    let linked = hutong_mpi::link(&records, None);
    let cl = &linked.clustering.cluster;
    assert_ne!(cl[0], cl[2], "two valid, different ID numbers were merged");
}

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
    // Same valid ID but a birth date a generation from the one the number carries: the card
    // is not this record's own (a household member's, lent at registration), so it says
    // nothing, and the generations rule keeps the two apart.
    let h = rec(
        "王子涵",
        "1975-08-20",
        Some(&id1),
        "13800138000",
        "文三路1号",
    );
    assert!(h.id_number.is_none());
    assert!(known_apart(&c, &h));
    // A birth date with one typo keeps its ID: one person.
    let i = rec(
        "王子涵",
        "2016-03-02",
        Some(&id1),
        "13800138000",
        "文三路1号",
    );
    assert!(!known_apart(&c, &i));
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

/// A record without an ID number that fits two ID-bearing namesakes equally well belongs to
/// neither: it goes to review beside both, and never joins them.
#[test]
fn a_record_between_two_namesakes_goes_to_review() {
    let id1 = hutong_cn::idcard::make(330106, 1980, 5, 6, 21);
    let id2 = hutong_cn::idcard::make(330108, 1980, 5, 6, 43);
    // A rare name, so that name and birth date alone would link each pair.
    let mut unknown_contact = rec("欧阳雪", "1980-05-06", None, "", "");
    unknown_contact.place = Default::default();
    let mut records = vec![
        rec(
            "欧阳雪",
            "1980-05-06",
            Some(&id1),
            "13800138000",
            "文三路1号",
        ),
        unknown_contact,
        rec(
            "欧阳雪",
            "1980-05-06",
            Some(&id2),
            "13700137000",
            "延安路200号",
        ),
    ];
    let (bg, _) = region_records(300, 5);
    records.extend(bg);
    let linked = hutong_mpi::link(&records, None);
    let c = &linked.clustering;
    assert_ne!(c.cluster[1], c.cluster[0], "joined the first namesake");
    assert_ne!(c.cluster[1], c.cluster[2], "joined the second namesake");
    assert_ne!(c.cluster[0], c.cluster[2]);
    // Both candidates wait in the review queue, side by side.
    let queued: Vec<(u32, u32)> = c
        .review
        .iter()
        .map(|p| (p.a.min(p.b), p.a.max(p.b)))
        .collect();
    assert!(queued.contains(&(0, 1)), "{queued:?}");
    assert!(queued.contains(&(1, 2)), "{queued:?}");
    // Without the rival, the same record links.
    let mut alone = records.clone();
    alone.remove(2);
    let l = hutong_mpi::link(&alone, None);
    assert_eq!(l.clustering.cluster[0], l.clustering.cluster[1]);
}

/// A common name and a birth date are weak evidence in a city of millions; a rare name with
/// the same birth date is strong.
#[test]
fn a_common_name_and_birth_date_do_not_link_alone() {
    let (bg, _) = region_records(300, 7);
    let linked = |name: &str, t: Option<hutong_mpi::Thresholds>| {
        // Nothing else to go by: one record has no phone or address.
        let mut bare = rec(name, "1985-03-01", None, "", "");
        bare.place = Default::default();
        let mut records = vec![
            rec(name, "1985-03-01", None, "13800138000", "文三路1号"),
            bare,
        ];
        records.extend(bg.iter().cloned());
        let l = hutong_mpi::link(&records, t);
        l.clustering.cluster[0] == l.clustering.cluster[1]
    };
    assert!(
        !linked("张伟", None),
        "a common name and birth date linked alone"
    );
    assert!(
        linked("欧阳雪", None),
        "a rare name and birth date did not link"
    );
    // In a small region the common name is strong evidence again.
    let small = hutong_mpi::Thresholds {
        population: 20_000.0,
        ..Default::default()
    };
    assert!(linked("张伟", Some(small)));
}

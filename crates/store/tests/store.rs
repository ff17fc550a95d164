//! The storage suite: every test runs on SQLite and on PostgreSQL.

use hutong_store::testing::AUDIT;
use hutong_store::testing::{postgres, sqlite, TestStore};
use hutong_store::{AuditEntry, HistoryScope, Lookup, Query, Scope, Store, StoreError};

const ALL: Scope = Scope::All;
use serde_json::{json, Value};

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite { $( #[test] fn $name() { super::$name(&super::sqlite()); } )* }
        mod on_postgres { $( #[test] fn $name() { if let Some(s) = super::postgres() { super::$name(&s); } } )* }
    };
}

both!(
    crud_versions_and_history,
    version_conflicts,
    search_kinds,
    chains_has_includes,
    sorting_and_paging,
    compartment_and_everything,
    failed_write_leaves_nothing,
    updates_within_one_transaction,
    scoped_reads,
    audit_entries_commit_with_their_changes,
    resident_restriction_is_sticky,
    schema_1_stores_are_upgraded,
    schema_2_stores_are_upgraded,
    schema_3_stores_become_posting_lists,
    long_posting_lists_page_in_order,
    index_rows_follow_the_current_version,
    clinical_times_come_from_the_index,
    shards_have_one_owner,
    deferred_value_indexes,
    change_log_in_commit_order,
);

fn put(s: &Store, rtype: &str, id: &str, v: Value) {
    s.write(&AUDIT, |tx| tx.update(rtype, id, v.clone(), None))
        .unwrap();
}

fn search(s: &Store, rtype: &str, params: &[(&str, &str)]) -> Vec<String> {
    let p: Vec<(String, String)> = params
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let q = Query::parse(rtype, &p, true).unwrap();
    let page = s.search(&q, &ALL).unwrap();
    let mut ids: Vec<String> = page.matches.iter().map(|m| m.id.clone()).collect();
    if params.iter().all(|(k, _)| *k != "_sort") {
        ids.sort();
    }
    ids
}

fn seed(s: &Store) {
    put(
        s,
        "Organization",
        "org1",
        json!({"resourceType": "Organization", "name": "广州市第一人民医院"}),
    );
    put(
        s,
        "Patient",
        "p1",
        json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:id", "value": "440106199001011234"}],
        "name": [{"family": "张", "given": ["伟"]}], "gender": "male", "birthDate": "1990-01-01",
        "managingOrganization": {"reference": "Organization/org1"}}),
    );
    put(
        s,
        "Patient",
        "p2",
        json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:id", "value": "440106198502024321"}],
        "name": [{"family": "Zoë", "given": ["Li"]}], "gender": "female", "birthDate": "1985-02-02"}),
    );
    for (id, pat, code, val, date) in [
        ("o1", "p1", "4548-4", 7.2, "2024-01-05T08:00:00Z"),
        ("o2", "p1", "4548-4", 6.8, "2024-03-05T08:00:00Z"),
        ("o3", "p2", "2345-7", 5.4, "2024-02-01"),
    ] {
        put(
            s,
            "Observation",
            id,
            json!({"resourceType": "Observation", "status": "final",
            "subject": {"reference": format!("Patient/{pat}")},
            "performer": [{"reference": "Organization/org1"}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": "Lab test"},
            "effectiveDateTime": date,
            "valueQuantity": {"value": val, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}),
        );
    }
}

fn crud_versions_and_history(t: &TestStore) {
    let s = &t.store;
    let created = s
        .write(&AUDIT, |tx| {
            tx.create(
                "Patient",
                None,
                json!({"resourceType": "Patient", "gender": "male"}),
            )
        })
        .unwrap();
    assert_eq!(created.version, 1);
    let id = created.id.clone();
    let read = s.read("Patient", &id, &ALL).unwrap().found().unwrap();
    let v = read.json().unwrap();
    assert_eq!(v["meta"]["versionId"], "1");
    assert_eq!(v["id"], id.as_str());
    let (u, was_created) = s
        .write(&AUDIT, |tx| {
            tx.update(
                "Patient",
                &id,
                json!({"resourceType": "Patient", "gender": "female"}),
                Some(1),
            )
        })
        .unwrap();
    assert!(!was_created);
    assert_eq!(u.version, 2);
    assert_eq!(
        s.vread("Patient", &id, 1, &ALL)
            .unwrap()
            .found()
            .unwrap()
            .json()
            .unwrap()["gender"],
        "male"
    );
    assert_eq!(
        s.vread("Patient", &id, 2, &ALL)
            .unwrap()
            .found()
            .unwrap()
            .json()
            .unwrap()["gender"],
        "female"
    );
    let d = s
        .write(&AUDIT, |tx| tx.delete("Patient", &id, None))
        .unwrap()
        .unwrap();
    assert_eq!(d.version, 3);
    assert!(
        s.read("Patient", &id, &ALL)
            .unwrap()
            .found()
            .unwrap()
            .deleted
    );
    assert!(s
        .write(&AUDIT, |tx| tx.delete("Patient", &id, None))
        .unwrap()
        .is_none());
    let (h, total) = s
        .history(
            &HistoryScope::Instance {
                rtype: "Patient".into(),
                id: id.clone(),
            },
            None,
            10,
            0,
            &ALL,
        )
        .unwrap();
    assert_eq!(total, Some(3));
    assert_eq!(h.iter().map(|x| x.version).collect::<Vec<_>>(), [3, 2, 1]);
    assert!(h[0].deleted);
    assert_eq!(
        s.history(&HistoryScope::Type("Patient".into()), None, 10, 0, &ALL)
            .unwrap()
            .1,
        Some(3)
    );
    assert_eq!(
        s.history(&HistoryScope::System, None, 2, 0, &ALL)
            .unwrap()
            .0
            .len(),
        2
    );
    // A deleted resource does not match searches; re-creating it continues the versions.
    assert!(search(s, "Patient", &[("gender", "female")]).is_empty());
    let (r, was_created) = s
        .write(&AUDIT, |tx| {
            tx.update("Patient", &id, json!({"resourceType": "Patient"}), None)
        })
        .unwrap();
    assert!(was_created);
    assert_eq!(r.version, 4);
}

fn version_conflicts(t: &TestStore) {
    let s = &t.store;
    put(s, "Patient", "vc", json!({"resourceType": "Patient"}));
    let e = s
        .write(&AUDIT, |tx| {
            tx.update("Patient", "vc", json!({"resourceType": "Patient"}), Some(7))
        })
        .unwrap_err();
    assert!(matches!(
        e,
        StoreError::VersionMismatch {
            expected: 7,
            current: 1
        }
    ));
    let e = s
        .write(&AUDIT, |tx| {
            tx.create("Patient", Some("vc"), json!({"resourceType": "Patient"}))
        })
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)));
}

fn search_kinds(t: &TestStore) {
    let s = &t.store;
    seed(s);
    assert_eq!(
        search(s, "Observation", &[("code", "4548-4")]),
        ["o1", "o2"]
    );
    assert_eq!(
        search(s, "Observation", &[("code", "http://loinc.org|2345-7")]),
        ["o3"]
    );
    assert_eq!(
        search(s, "Observation", &[("code", "http://other|2345-7")]),
        Vec::<String>::new()
    );
    assert_eq!(
        search(s, "Observation", &[("code", "4548-4,2345-7")]).len(),
        3
    );
    assert_eq!(search(s, "Observation", &[("code:not", "4548-4")]), ["o3"]);
    assert_eq!(search(s, "Observation", &[("code:text", "lab")]).len(), 3);
    assert_eq!(search(s, "Patient", &[("name", "zo")]), ["p2"]);
    assert_eq!(search(s, "Patient", &[("family", "张")]), ["p1"]);
    assert_eq!(search(s, "Patient", &[("family:exact", "Zoë")]), ["p2"]);
    assert_eq!(
        search(s, "Patient", &[("family:exact", "zoë")]),
        Vec::<String>::new()
    );
    assert_eq!(search(s, "Patient", &[("name:contains", "i")]), ["p2"]);
    assert_eq!(
        search(s, "Patient", &[("identifier", "urn:id|440106199001011234")]),
        ["p1"]
    );
    assert_eq!(search(s, "Patient", &[("birthdate", "1990")]), ["p1"]);
    assert_eq!(
        search(s, "Patient", &[("birthdate", "lt1990-01-01")]),
        ["p2"]
    );
    assert_eq!(
        search(s, "Patient", &[("birthdate", "ge1990-01-01")]),
        ["p1"]
    );
    assert_eq!(
        search(s, "Patient", &[("birthdate", "ne1990-01-01")]),
        ["p2"]
    );
    assert_eq!(
        search(
            s,
            "Observation",
            &[("date", "ge2024-02-01"), ("date", "lt2024-03")]
        ),
        ["o3"]
    );
    assert_eq!(
        search(s, "Observation", &[("date", "sa2024-01-31")]),
        ["o2", "o3"]
    );
    assert_eq!(
        search(s, "Observation", &[("date", "eb2024-01-31")]),
        ["o1"]
    );
    assert_eq!(
        search(s, "Observation", &[("value-quantity", "gt7")]),
        ["o1"]
    );
    assert_eq!(
        search(s, "Observation", &[("value-quantity", "5.4")]),
        ["o3"]
    );
    assert_eq!(
        search(
            s,
            "Observation",
            &[("value-quantity", "le6.8|http://unitsofmeasure.org|%")]
        ),
        ["o2", "o3"]
    );
    assert_eq!(
        search(s, "Observation", &[("value-quantity", "ap7")]),
        ["o1", "o2"]
    );
    assert_eq!(
        search(s, "Observation", &[("subject", "Patient/p1")]),
        ["o1", "o2"]
    );
    assert_eq!(search(s, "Observation", &[("subject", "p2")]), ["o3"]);
    assert_eq!(search(s, "Observation", &[("patient", "p2")]), ["o3"]);
    // Derived parameters are served from their base's rows.
    assert_eq!(
        search(s, "Observation", &[("patient", "Organization/org1")]),
        Vec::<String>::new()
    );
    assert_eq!(
        search(s, "Observation", &[("patient:missing", "false")]).len(),
        3
    );
    assert_eq!(
        search(s, "Observation", &[("combo-code", "2345-7")]),
        ["o3"]
    );
    assert_eq!(
        search(s, "Observation", &[("patient.birthdate", "1985")]),
        ["o3"]
    );
    assert_eq!(
        search(
            s,
            "Observation",
            &[("code-value-quantity", "http://loinc.org|4548-4$gt7")]
        ),
        ["o1"]
    );
    assert_eq!(
        search(s, "Observation", &[("code-value-quantity", "4548-4$lt7")]),
        ["o2"]
    );
    // The combo composite finds the same from the resource-level rows it shares.
    assert_eq!(
        search(
            s,
            "Observation",
            &[("combo-code-value-quantity", "http://loinc.org|4548-4$gt7")]
        ),
        ["o1"]
    );
    assert_eq!(
        search(s, "Observation", &[("combo-value-quantity", "gt7")]),
        search(s, "Observation", &[("value-quantity", "gt7")]),
    );
    assert!(!search(s, "Observation", &[("combo-value-quantity", "gt7")]).is_empty());
    // Resource-level composites are their two parameters on the same resource: the pair
    // must be one resource's, not a code from one and a value from another.
    assert_eq!(
        search(s, "Observation", &[("code-value-quantity", "2345-7$gt7")]),
        Vec::<String>::new()
    );
    assert_eq!(
        search(
            s,
            "Observation",
            &[(
                "code-value-quantity",
                "4548-4$gt7|http://unitsofmeasure.org|%,2345-7$lt6"
            )]
        ),
        ["o1", "o3"]
    );
    assert_eq!(
        search(
            s,
            "Observation",
            &[(
                "code-value-quantity",
                "4548-4$gt7|http://unitsofmeasure.org|mg"
            )]
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        search(
            s,
            "Observation",
            &[("code-value-quantity:missing", "false")]
        )
        .len(),
        3
    );
    assert_eq!(
        search(s, "Observation", &[("code-value-concept:missing", "true")]).len(),
        3
    );
    put(
        s,
        "Observation",
        "bp",
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "valueCodeableConcept": {"coding": [{"system": "urn:v", "code": "high"}]},
            "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": 150, "code": "mm[Hg]"}}]}),
    );
    assert_eq!(
        search(
            s,
            "Observation",
            &[("code-value-concept", "85354-9$urn:v|high")]
        ),
        ["bp"]
    );
    assert_eq!(
        search(
            s,
            "Observation",
            &[("code-value-concept", "85354-9$urn:v|low")]
        ),
        Vec::<String>::new()
    );
    // The combo composite: the component's pair from its own rows, the resource's from
    // the split.
    for v in ["8480-6$gt140", "85354-9$urn:v|high"] {
        let param = if v.contains("urn:v") {
            "combo-code-value-concept"
        } else {
            "combo-code-value-quantity"
        };
        assert_eq!(
            search(s, "Observation", &[(param, v)]),
            ["bp"],
            "{param}={v}"
        );
    }
    assert_eq!(
        search(
            s,
            "Observation",
            &[("combo-code-value-quantity", "8480-6$gt140,4548-4$gt7")]
        ),
        ["bp", "o1"]
    );
    assert_eq!(
        search(
            s,
            "Observation",
            &[("component-code-value-quantity", "8480-6$gt140")]
        ),
        ["bp"]
    );
    assert_eq!(
        search(
            s,
            "Observation",
            &[("combo-code-value-quantity:missing", "true")]
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        search(s, "Patient", &[("gender:missing", "false")]).len(),
        2
    );
    assert_eq!(
        search(s, "Patient", &[("deceased:missing", "true")]),
        Vec::<String>::new()
    );
    assert_eq!(
        search(s, "Patient", &[("address:missing", "true")]).len(),
        2
    );
    // `_source` is the submitter stamped on the current version (served from `res.src`).
    for (id, src) in [("src1", "urn:org:a/ward/1"), ("src2", "urn:org:b")] {
        put(
            s,
            "Encounter",
            id,
            json!({"resourceType": "Encounter", "status": "finished", "meta": {"source": src}}),
        );
    }
    put(
        s,
        "Encounter",
        "src3",
        json!({"resourceType": "Encounter", "status": "finished"}),
    );
    assert_eq!(
        search(s, "Encounter", &[("_source", "urn:org:b")]),
        ["src2"]
    );
    assert_eq!(
        search(s, "Encounter", &[("_source", "urn:org:a")]),
        Vec::<String>::new()
    );
    assert_eq!(
        search(s, "Encounter", &[("_source:below", "urn:org:a/")]),
        ["src1"]
    );
    assert_eq!(
        search(
            s,
            "Encounter",
            &[("_source:above", "urn:org:a/ward/1/bed/3")]
        ),
        ["src1"]
    );
    assert_eq!(
        search(s, "Encounter", &[("_source:missing", "true")]),
        ["src3"]
    );
    assert_eq!(
        search(s, "Encounter", &[("_source:missing", "false")]),
        ["src1", "src2"]
    );
    assert_eq!(
        search(s, "Observation", &[("_source", "urn:org:b")]),
        Vec::<String>::new()
    );
    put(
        s,
        "Encounter",
        "src2",
        json!({"resourceType": "Encounter", "status": "finished", "meta": {"source": "urn:org:c"}}),
    );
    assert_eq!(
        search(s, "Encounter", &[("_source", "urn:org:b")]),
        Vec::<String>::new()
    );
    assert_eq!(
        search(s, "Encounter", &[("_source", "urn:org:c,urn:org:b")]),
        ["src2"]
    );
    assert_eq!(search(s, "Patient", &[("_id", "p1,p9")]), ["p1"]);
    assert_eq!(
        search(s, "Patient", &[("_lastUpdated", "gt2000-01-01")]).len(),
        2
    );
    assert_eq!(
        search(s, "Patient", &[("_lastUpdated", "lt2000-01-01")]).len(),
        0
    );
    // Updating moves the index: the old value no longer matches.
    put(
        s,
        "Patient",
        "p1",
        json!({"resourceType": "Patient", "gender": "other"}),
    );
    assert!(search(s, "Patient", &[("family", "张")]).is_empty());
    assert_eq!(search(s, "Patient", &[("gender", "other")]), ["p1"]);
}

fn chains_has_includes(t: &TestStore) {
    let s = &t.store;
    seed(s);
    assert_eq!(
        search(
            s,
            "Observation",
            &[("subject:Patient.identifier", "urn:id|440106198502024321")]
        ),
        ["o3"]
    );
    assert_eq!(
        search(s, "Observation", &[("subject.name", "张")]),
        ["o1", "o2"]
    );
    assert_eq!(
        search(s, "Observation", &[("patient.organization.name", "广州")]),
        ["o1", "o2"]
    );
    assert_eq!(
        search(s, "Patient", &[("_has:Observation:patient:code", "2345-7")]),
        ["p2"]
    );
    let q = Query::parse(
        "Observation",
        &[
            ("code".into(), "4548-4".into()),
            ("_include".into(), "Observation:subject".into()),
        ],
        true,
    )
    .unwrap();
    let page = s.search(&q, &ALL).unwrap();
    assert_eq!(page.matches.len(), 2);
    assert_eq!(
        page.included
            .iter()
            .map(|x| x.id.as_str())
            .collect::<Vec<_>>(),
        ["p1"]
    );
    let q = Query::parse(
        "Patient",
        &[
            ("_id".into(), "p1".into()),
            ("_revinclude".into(), "Observation:subject".into()),
        ],
        true,
    )
    .unwrap();
    assert_eq!(s.search(&q, &ALL).unwrap().included.len(), 2);
    let q = Query::parse(
        "Observation",
        &[
            ("_id".into(), "o1".into()),
            ("_include".into(), "Observation:subject".into()),
            ("_include:iterate".into(), "Patient:organization".into()),
        ],
        true,
    )
    .unwrap();
    let mut inc: Vec<String> = s
        .search(&q, &ALL)
        .unwrap()
        .included
        .iter()
        .map(|x| x.id.clone())
        .collect();
    inc.sort();
    assert_eq!(inc, ["org1", "p1"]);
}

fn sorting_and_paging(t: &TestStore) {
    let s = &t.store;
    seed(s);
    assert_eq!(
        search(s, "Observation", &[("_sort", "date")]),
        ["o1", "o3", "o2"]
    );
    assert_eq!(
        search(s, "Observation", &[("_sort", "-date")]),
        ["o2", "o3", "o1"]
    );
    assert_eq!(
        search(s, "Observation", &[("_sort", "subject,-date")]),
        ["o2", "o1", "o3"]
    );
    // Amounts and codes live in the value-first tables: sorted in memory after one pass.
    assert_eq!(
        search(s, "Observation", &[("_sort", "value-quantity")]),
        ["o3", "o2", "o1"]
    );
    assert_eq!(
        search(s, "Observation", &[("_sort", "-value-quantity")]),
        ["o1", "o2", "o3"]
    );
    assert_eq!(
        search(s, "Observation", &[("_sort", "code,-date")]),
        ["o3", "o2", "o1"]
    );
    let page = s
        .search(
            &Query::parse(
                "Observation",
                &[
                    ("_sort".into(), "-value-quantity".into()),
                    ("_count".into(), "1".into()),
                    ("_offset".into(), "1".into()),
                ],
                true,
            )
            .unwrap(),
            &ALL,
        )
        .unwrap();
    assert_eq!(
        (page.matches[0].id.as_str(), page.has_more, page.total),
        ("o2", true, Some(3))
    );
    let params = |off: &str| {
        vec![
            ("_count".to_string(), "2".to_string()),
            ("_offset".to_string(), off.to_string()),
            ("_sort".to_string(), "_id".to_string()),
        ]
    };
    let p1 = s
        .search(
            &Query::parse("Observation", &params("0"), true).unwrap(),
            &ALL,
        )
        .unwrap();
    assert_eq!(p1.total, Some(3));
    assert!(p1.has_more);
    let p2 = s
        .search(
            &Query::parse("Observation", &params("2"), true).unwrap(),
            &ALL,
        )
        .unwrap();
    assert!(!p2.has_more);
    let ids: Vec<&str> = p1
        .matches
        .iter()
        .chain(&p2.matches)
        .map(|m| m.id.as_str())
        .collect();
    assert_eq!(ids, ["o1", "o2", "o3"]);
    let c = s
        .search(
            &Query::parse("Observation", &[("_summary".into(), "count".into())], true).unwrap(),
            &ALL,
        )
        .unwrap();
    assert_eq!((c.total, c.matches.len()), (Some(3), 0));
}

fn compartment_and_everything(t: &TestStore) {
    let s = &t.store;
    seed(s);
    let q = Query::all("Observation").in_compartment("p1").unwrap();
    assert_eq!(s.search(&q, &ALL).unwrap().matches.len(), 2);
    let e = hutong_store::search::Everything {
        patient: "p1".into(),
        count: 100,
        ..Default::default()
    };
    let page = s.everything(&e, &ALL).unwrap();
    let mut ids: Vec<String> = page
        .matches
        .iter()
        .map(|m| format!("{}/{}", m.rtype, m.id))
        .collect();
    ids.sort();
    assert_eq!(ids, ["Observation/o1", "Observation/o2", "Patient/p1"]);
    let e = hutong_store::search::Everything {
        patient: "p1".into(),
        count: 100,
        start: hutong_fhir::date::parse("2024-02").map(|r| r.lo),
        ..Default::default()
    };
    let ids: Vec<String> = s
        .everything(&e, &ALL)
        .unwrap()
        .matches
        .iter()
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(ids, ["p1", "o2"]);
}

fn failed_write_leaves_nothing(t: &TestStore) {
    let s = &t.store;
    let r = s.write(&AUDIT, |tx| {
        tx.update("Patient", "a1", json!({"resourceType": "Patient"}), None)?;
        tx.update("Patient", "a2", json!({"resourceType": "Patient"}), None)?;
        Err::<(), _>(StoreError::Invalid("boom".into()))
    });
    assert!(r.is_err());
    assert!(matches!(
        s.read("Patient", "a1", &ALL).unwrap(),
        Lookup::Missing
    ));
    assert!(search(s, "Patient", &[]).is_empty());
}

/// The embedded store maps the whole database file (the bundled SQLite is built to allow it:
/// .cargo/config.toml), not just its first 2 GiB.
#[test]
fn the_whole_file_is_mapped() {
    let t = sqlite();
    let mapped = t.store.query_admin("PRAGMA mmap_size", &[]).unwrap()[0][0].int();
    assert!(mapped >= 64 << 30, "mmap_size {mapped}");
}

/// After enough writes the embedded store trains a body dictionary; bodies written before
/// and after it stay readable, also after reopening.
#[test]
fn dictionary_is_trained_and_everything_stays_readable() {
    let t = sqlite();
    let s = &t.store;
    let batch = |from: usize| {
        s.write(&AUDIT, |tx| {
            for i in from..from + 1000 {
                tx.update("Observation", &format!("d{i}"), json!({"resourceType": "Observation", "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": format!("{}", 1000 + i % 50)}]},
                    "subject": {"reference": format!("Patient/p{}", i % 40)},
                    "valueQuantity": {"value": i, "unit": "mg/dL"}}), None)?;
            }
            Ok::<_, StoreError>(())
        })
        .unwrap()
    };
    for k in 0..4 {
        batch(k * 1000);
    }
    let rows = s.query_admin("SELECT COUNT(*) FROM dict", &[]).unwrap();
    assert_eq!(rows[0][0].int(), 1, "a dictionary was trained");
    batch(4000);
    for id in ["d0", "d3999", "d4999"] {
        assert_eq!(
            s.read("Observation", id, &ALL)
                .unwrap()
                .found()
                .unwrap()
                .json()
                .unwrap()["id"],
            id
        );
    }
    let reopened = Store::open(&t.location).unwrap();
    assert_eq!(
        reopened
            .read("Observation", "d4500", &ALL)
            .unwrap()
            .found()
            .unwrap()
            .json()
            .unwrap()["status"],
        "final"
    );
    assert_eq!(
        reopened
            .read("Observation", "d10", &ALL)
            .unwrap()
            .found()
            .unwrap()
            .json()
            .unwrap()["status"],
        "final"
    );
}

fn updates_within_one_transaction(t: &TestStore) {
    let s = &t.store;
    // Index rows are buffered until the transaction ends (or a search): a second version
    // written in the same transaction must replace the first one's rows, not add to them.
    let found = s
        .write(&AUDIT, |tx| {
            tx.update(
                "Patient",
                "w1",
                json!({"resourceType": "Patient", "gender": "male"}),
                None,
            )?;
            tx.update(
                "Patient",
                "w1",
                json!({"resourceType": "Patient", "gender": "female"}),
                None,
            )?;
            let q = Query::parse("Patient", &[("gender".into(), "female".into())], true).unwrap();
            Ok::<_, StoreError>(tx.search(&q, &ALL)?.matches.len())
        })
        .unwrap();
    assert_eq!(found, 1);
    assert!(search(s, "Patient", &[("gender", "male")]).is_empty());
    assert_eq!(search(s, "Patient", &[("gender", "female")]), ["w1"]);
    assert_eq!(
        s.read("Patient", "w1", &ALL)
            .unwrap()
            .found()
            .unwrap()
            .version,
        2
    );
}

/// Two institutions' records of one resident and another resident's, with a sensitive one.
fn seed_scoped(s: &Store) {
    let psy = json!([{"system": hutong_fhir::security::ACT_CODE, "code": "PSY"}]);
    for (rtype, id, source, body) in [
        ("Organization", "org1", "urn:org:a", json!({"name": "A"})),
        (
            "Task",
            "t0",
            "urn:org:a",
            json!({"status": "requested", "intent": "order"}),
        ),
        (
            "Patient",
            "pa",
            "urn:org:a",
            json!({"identifier": [{"system": "urn:mrn:a", "value": "1"}]}),
        ),
        (
            "Patient",
            "pb",
            "urn:org:b",
            json!({"identifier": [{"system": "urn:mrn:b", "value": "1"}]}),
        ),
        (
            "Patient",
            "pc",
            "urn:org:b",
            json!({"identifier": [{"system": "urn:mrn:b", "value": "2"}]}),
        ),
        (
            "Observation",
            "a1",
            "urn:org:a",
            json!({"status": "final", "subject": {"reference": "Patient/pa"}, "code": {"coding": [{"system": "http://loinc.org", "code": "x"}]}, "performer": [{"reference": "Organization/org1"}]}),
        ),
        (
            "Observation",
            "b1",
            "urn:org:b",
            json!({"status": "final", "subject": {"reference": "Patient/pb"}, "code": {"coding": [{"system": "http://loinc.org", "code": "x"}]}}),
        ),
        (
            "Observation",
            "b2",
            "urn:org:b",
            json!({"status": "final", "subject": {"reference": "Patient/pb"}, "code": {"coding": [{"system": "http://loinc.org", "code": "x"}]}, "meta": {"security": psy}}),
        ),
        // Filed by A under B's patient: A's own submission even so.
        (
            "Observation",
            "a2",
            "urn:org:a",
            json!({"status": "final", "subject": {"reference": "Patient/pb"}, "code": {"coding": [{"system": "http://loinc.org", "code": "x"}]}}),
        ),
        (
            "Observation",
            "c1",
            "urn:org:b",
            json!({"status": "final", "subject": {"reference": "Patient/pc"}, "code": {"coding": [{"system": "http://loinc.org", "code": "x"}]}}),
        ),
    ] {
        let mut v = body;
        v["resourceType"] = json!(rtype);
        let meta = v
            .as_object_mut()
            .unwrap()
            .entry("meta")
            .or_insert(json!({}));
        meta["source"] = json!(source);
        put(s, rtype, id, v);
    }
}

fn ids_of(page: &hutong_store::Page) -> Vec<String> {
    let mut v: Vec<String> = page.matches.iter().map(|m| m.id.clone()).collect();
    v.sort();
    v
}

fn scoped_reads(t: &TestStore) {
    let s = &t.store;
    seed_scoped(s);
    let pb = hutong_store::shard_of("pb");
    // Institution A, with a grant for the person of `pb` that does not open mental health.
    let a = Scope::rows(hutong_store::RowScope {
        types: None,
        sources: ["urn:org:a".to_string()].into(),
        shards: [(pb, 0)].into(),
        reference: ["Organization".to_string()].into(),
        everywhere: None,
    });
    let q = |params: &[(&str, &str)]| {
        let p: Vec<(String, String)> = params
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Query::parse("Observation", &p, true).unwrap()
    };
    let page = s.search(&q(&[("code", "x")]), &a).unwrap();
    assert_eq!(ids_of(&page), ["a1", "a2", "b1"]);
    assert_eq!(page.total, Some(3), "the count sees only what may be seen");
    let paged = s.search(&q(&[("code", "x"), ("_count", "2")]), &a).unwrap();
    assert!(paged.has_more);
    let rest = s
        .search(&q(&[("code", "x"), ("_count", "2"), ("_offset", "2")]), &a)
        .unwrap();
    assert_eq!(paged.matches.len() + rest.matches.len(), 3);
    assert!(!rest.has_more);
    // A grant list of hundreds of shards (written differently on SQLite: a sorted set the
    // store binary-searches) sees exactly the same rows.
    let many = Scope::rows(hutong_store::RowScope {
        types: None,
        sources: ["urn:org:a".to_string()].into(),
        shards: (1..40)
            .map(|i| (hutong_store::shard_of(&format!("nobody-{i}")), 0))
            .chain([(pb, 0)])
            .collect(),
        reference: ["Organization".to_string()].into(),
        everywhere: None,
    });
    for params in [
        &[("code", "x")][..],
        &[("subject:Patient.identifier", "urn:mrn:b|1")][..],
        &[("subject:Patient.identifier", "urn:mrn:b|2")][..],
    ] {
        assert_eq!(
            ids_of(&s.search(&q(params), &many).unwrap()),
            ids_of(&s.search(&q(params), &a).unwrap()),
            "{params:?}"
        );
    }
    let without_pb = Scope::rows(hutong_store::RowScope {
        sources: ["urn:org:a".to_string()].into(),
        shards: (1..40)
            .map(|i| (hutong_store::shard_of(&format!("nobody-{i}")), 0))
            .collect(),
        ..Default::default()
    });
    assert_eq!(
        ids_of(&s.search(&q(&[("code", "x")]), &without_pb).unwrap()),
        ["a1", "a2"]
    );
    // Chains look only through visible targets: pc's identifier is not A's to test.
    assert!(ids_of(
        &s.search(&q(&[("subject:Patient.identifier", "urn:mrn:b|2")]), &a)
            .unwrap()
    )
    .is_empty());
    assert_eq!(
        ids_of(
            &s.search(&q(&[("subject:Patient.identifier", "urn:mrn:b|1")]), &a)
                .unwrap()
        ),
        ["a2", "b1"]
    );
    // _has does not reveal what an invisible resource points at.
    let has = Query::parse(
        "Patient",
        &[("_has:Observation:subject:code".into(), "x".into())],
        true,
    )
    .unwrap();
    assert_eq!(ids_of(&s.search(&has, &a).unwrap()), ["pa", "pb"]);
    // Includes: the organisation (reference data) yes; the other resident's patient no.
    let inc = Query::parse(
        "Observation",
        &[
            ("_id".into(), "a1,c1".into()),
            ("_include".into(), "Observation:performer".into()),
            ("_include".into(), "Observation:subject".into()),
        ],
        true,
    )
    .unwrap();
    let page = s.search(&inc, &a).unwrap();
    let mut included: Vec<String> = page.included.iter().map(|x| x.id.clone()).collect();
    included.sort();
    assert_eq!(
        (ids_of(&page), included),
        (
            vec!["a1".to_string()],
            vec!["org1".to_string(), "pa".to_string()]
        )
    );
    // Single reads.
    assert!(matches!(
        s.read("Observation", "b2", &a).unwrap(),
        Lookup::Hidden
    ));
    assert!(matches!(
        s.read("Observation", "c1", &a).unwrap(),
        Lookup::Hidden
    ));
    assert!(
        matches!(s.read("Task", "t0", &a).unwrap(), Lookup::Found(_)),
        "own, though not reference data"
    );
    let other = Scope::rows(hutong_store::RowScope {
        sources: ["urn:org:c".to_string()].into(),
        reference: ["Organization".to_string()].into(),
        ..Default::default()
    });
    assert!(matches!(
        s.read("Task", "t0", &other).unwrap(),
        Lookup::Hidden
    ));
    assert!(matches!(
        s.read("Organization", "org1", &other).unwrap(),
        Lookup::Found(_)
    ));
    let found = s.read("Observation", "b1", &a).unwrap().found().unwrap();
    assert_eq!(
        (found.source.as_str(), found.shard, found.sens),
        ("urn:org:b", pb, 0)
    );
    // $everything of pb: its own records except the closed category, and A's filing.
    let e = hutong_store::search::Everything {
        patient: "pb".into(),
        count: 100,
        ..Default::default()
    };
    let page = s.everything(&e, &a).unwrap();
    let mut got: Vec<String> = page.matches.iter().map(|m| m.id.clone()).collect();
    got.sort();
    assert_eq!(
        (got, page.total),
        (
            vec!["a2".to_string(), "b1".to_string(), "pb".to_string()],
            Some(3)
        )
    );
    let psy = Scope::rows(hutong_store::RowScope {
        shards: [(pb, hutong_fhir::security::MENTAL_HEALTH)].into(),
        ..Default::default()
    });
    assert_eq!(s.everything(&e, &psy).unwrap().total, Some(4));
    // History and export scans.
    let (h, total) = s
        .history(&HistoryScope::Type("Observation".into()), None, 50, 0, &a)
        .unwrap();
    let mut hs: Vec<String> = h.iter().map(|x| x.id.clone()).collect();
    hs.sort();
    assert_eq!(
        (hs, total),
        (
            vec!["a1".to_string(), "a2".to_string(), "b1".to_string()],
            Some(3)
        )
    );
    let (scanned, _) = s
        .scan("Observation", None, false, i64::MIN, 100, &a)
        .unwrap();
    assert_eq!(scanned.len(), 3);
    // A type-limited scope (SMART scopes): only Observations, even of A's own.
    let typed = Scope::rows(hutong_store::RowScope {
        types: Some(["Observation".to_string()].into()),
        sources: ["urn:org:a".to_string()].into(),
        ..Default::default()
    });
    assert!(ids_of(&s.search(&Query::all("Patient"), &typed).unwrap()).is_empty());
    assert_eq!(
        s.history(&HistoryScope::System, None, 50, 0, &typed)
            .unwrap()
            .1,
        Some(2)
    );
    // A resident sees their own shards whole, including what is sensitive.
    let resident = Scope::rows(hutong_store::RowScope {
        shards: [(pb, hutong_fhir::security::ALL)].into(),
        ..Default::default()
    });
    assert_eq!(
        ids_of(&s.search(&q(&[]), &resident).unwrap()),
        ["a2", "b1", "b2"]
    );
    assert_eq!(s.search(&q(&[]), &Scope::none()).unwrap().total, Some(0));
}

fn audit_entries_commit_with_their_changes(t: &TestStore) {
    let s = &t.store;
    put(s, "Patient", "x1", json!({"resourceType": "Patient"}));
    let failed = s.write(&AUDIT, |tx| {
        tx.update("Patient", "x2", json!({"resourceType": "Patient"}), None)?;
        Err::<(), _>(StoreError::Invalid("no".into()))
    });
    assert!(failed.is_err());
    let heads = s.audit_heads().unwrap();
    let rows: Vec<_> = heads
        .iter()
        .flat_map(|(part, _, _)| s.audit_rows(*part, 1, 100).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "the rolled-back write left no entry");
    assert!(rows[0].entry.contains("Patient/x1/_history/1"));
    let (part, seq, hash) = &heads.iter().find(|h| h.1 > 0).unwrap().clone();
    assert_eq!((rows[0].part, rows[0].seq), (*part, *seq));
    assert_eq!(&rows[0].hash, hash);
    assert_eq!(
        rows[0].hash,
        hutong_store::audit::chain_hash(&rows[0].prev, rows[0].part, 1, rows[0].ts, &rows[0].entry)
    );
    // Accesses are appended in batches; each chains on the one before.
    let shard = hutong_store::shard_of("x1");
    s.append_audit(&[
        AuditEntry {
            ts: 1,
            entry: "{\"read\":1}".into(),
            subjects: vec![shard],
        },
        AuditEntry {
            ts: 2,
            entry: "{\"read\":2}".into(),
            subjects: vec![shard],
        },
    ])
    .unwrap();
    let part = shard.rem_euclid(hutong_store::audit::partitions(s.dialect()));
    let rows = s.audit_rows(part, 1, 10).unwrap();
    for w in rows.windows(2) {
        assert_eq!(w[1].prev, w[0].hash);
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    let (about, total) = s
        .audit_about(Some(&[shard]), i64::MIN, i64::MAX, 10, 0)
        .unwrap();
    assert_eq!(total, 3);
    assert_eq!(about.len(), 3);
    assert!(s
        .audit_about(Some(&[shard + 1]), i64::MIN, i64::MAX, 10, 0)
        .unwrap()
        .0
        .is_empty());
}

fn resident_restriction_is_sticky(t: &TestStore) {
    let s = &t.store;
    seed_scoped(s);
    let pb = hutong_store::shard_of("pb");
    let grant = Scope::rows(hutong_store::RowScope {
        shards: [(pb, 0)].into(),
        ..Default::default()
    });
    s.write(&AUDIT, |tx| {
        tx.set_resident_restricted("Observation", "b1", true)
    })
    .unwrap();
    assert!(matches!(
        s.read("Observation", "b1", &grant).unwrap(),
        Lookup::Hidden
    ));
    let all = Query::parse("Observation", &[], true).unwrap();
    assert_eq!(
        s.search(&all, &grant).unwrap().total,
        Some(1),
        "only a2 remains"
    );
    // A new version from the source stays restricted.
    let mut v = s
        .read("Observation", "b1", &ALL)
        .unwrap()
        .found()
        .unwrap()
        .json()
        .unwrap();
    v["status"] = json!("amended");
    put(s, "Observation", "b1", v);
    let r = s.read("Observation", "b1", &ALL).unwrap().found().unwrap();
    assert_eq!(
        (r.version, r.sens),
        (2, hutong_fhir::security::RESIDENT_RESTRICTED)
    );
    assert!(matches!(
        s.read("Observation", "b1", &grant).unwrap(),
        Lookup::Hidden
    ));
    s.write(&AUDIT, |tx| {
        tx.set_resident_restricted("Observation", "b1", false)
    })
    .unwrap();
    assert!(matches!(
        s.read("Observation", "b1", &grant).unwrap(),
        Lookup::Found(_)
    ));
}

/// A store written by schema 1 (before versions recorded who submitted them and how
/// sensitive they are) is upgraded when opened: the new columns are filled from the bodies.
fn schema_1_stores_are_upgraded(t: &TestStore) {
    let s = &t.store;
    seed_scoped(s);
    // Back to schema 1.
    for stmt in [
        "DROP INDEX res_lastmod_src",
        "ALTER TABLE res DROP COLUMN src",
        "ALTER TABLE res DROP COLUMN sens",
        "ALTER TABLE res_hist DROP COLUMN src",
        "ALTER TABLE res_hist DROP COLUMN sens",
        "DROP INDEX res_route_src",
        "ALTER TABLE res_route DROP COLUMN src",
        "DROP TABLE ix_sens",
        "UPDATE meta SET v = '1' WHERE k = 'schema'",
    ] {
        s.exec_admin(stmt, &[]).unwrap();
    }
    let reopened = Store::open(&t.location).unwrap();
    assert_eq!(
        reopened.meta("schema").unwrap(),
        Some(hutong_store::schema::SCHEMA_VERSION.to_string())
    );
    let b = Scope::rows(hutong_store::RowScope {
        sources: ["urn:org:b".to_string()].into(),
        ..Default::default()
    });
    let obs = Query::parse("Observation", &[], true).unwrap();
    assert_eq!(
        reopened.search(&obs, &b).unwrap().total,
        Some(3),
        "b1, b2 and c1"
    );
    let pb = hutong_store::shard_of("pb");
    let grant = Scope::rows(hutong_store::RowScope {
        shards: [(pb, 0)].into(),
        ..Default::default()
    });
    assert_eq!(
        reopened.search(&obs, &grant).unwrap().total,
        Some(2),
        "the mental-health item is known as such again"
    );
}

/// A store written by schema 2 (token, reference, number and composite rows keyed by resource
/// with a second copy keyed by value; code texts among the strings) is rebuilt into the
/// value-first tables when opened, and searches as before.
fn schema_2_stores_are_upgraded(t: &TestStore) {
    use hutong_store::sql::Dialect;
    let s = &t.store;
    seed(s);
    let before = [
        search(s, "Observation", &[("code", "http://loinc.org|4548-4")]),
        search(s, "Observation", &[("subject", "Patient/p1")]),
        search(s, "Observation", &[("value-quantity", "gt7")]),
        search(s, "Observation", &[("code:text", "lab")]),
        search(s, "Observation", &[("code-value-quantity", "4548-4$lt7")]),
    ];
    assert_eq!(before[0], ["o1", "o2"]);
    let texts = s.query_admin("SELECT COUNT(*) FROM ix_txt", &[]).unwrap()[0][0].int();
    assert!(texts > 0, "code texts are indexed");
    // Back to schema 2's layout.
    let old = [
        (
            "ix_tok",
            "shard, rid, pid, sid, code",
            "ix_tok_v ON ix_tok (pid, code, sid)",
        ),
        (
            "ix_ref",
            "shard, rid, pid, ttype, tid",
            "ix_ref_t ON ix_ref (tid, ttype, pid)",
        ),
        (
            "ix_num",
            "shard, rid, pid, lo, hi, sid, code",
            "ix_num_v ON ix_num (pid, lo)",
        ),
        (
            "ix_comp",
            "shard, rid, pid, k, lo, hi, v",
            "ix_comp_v ON ix_comp (pid, k)",
        ),
    ];
    for (table, key, index) in old {
        let stmts = match s.dialect() {
            Dialect::Sqlite => vec![
                format!("CREATE TABLE {table}_old AS SELECT * FROM {table}"),
                drop_sqlite_table(s, table),
                format!(
                    "CREATE TABLE {table} ({}, PRIMARY KEY ({key})) WITHOUT ROWID",
                    key.split(", ")
                        .map(|c| format!("{c} NOT NULL"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                format!("INSERT INTO {table} ({key}) SELECT {key} FROM {table}_old"),
                format!("DROP TABLE {table}_old"),
                format!("CREATE INDEX {index}"),
            ],
            Dialect::Postgres => vec![
                format!("ALTER TABLE {table} DROP CONSTRAINT {table}_pkey"),
                format!("ALTER TABLE {table} ADD PRIMARY KEY ({key})"),
                format!("CREATE INDEX {index}"),
            ],
        };
        for stmt in stmts {
            s.batch_admin(&stmt).unwrap();
        }
    }
    for stmt in [
        "INSERT INTO ix_str (shard, rid, pid, norm, raw) SELECT shard, rid, pid, norm, '' FROM ix_txt".to_string(),
        match s.dialect() {
            Dialect::Sqlite => drop_sqlite_table(s, "ix_txt"),
            Dialect::Postgres => "DROP TABLE ix_txt".to_string(),
        },
        "UPDATE meta SET v = '2' WHERE k = 'schema'".to_string(),
    ] {
        s.batch_admin(&stmt).unwrap();
    }
    let reopened = Store::open(&t.location).unwrap();
    assert_eq!(
        reopened.meta("schema").unwrap(),
        Some(hutong_store::schema::SCHEMA_VERSION.to_string())
    );
    let after = [
        search(
            &reopened,
            "Observation",
            &[("code", "http://loinc.org|4548-4")],
        ),
        search(&reopened, "Observation", &[("subject", "Patient/p1")]),
        search(&reopened, "Observation", &[("value-quantity", "gt7")]),
        search(&reopened, "Observation", &[("code:text", "lab")]),
        search(
            &reopened,
            "Observation",
            &[("code-value-quantity", "4548-4$lt7")],
        ),
    ];
    assert_eq!(before, after);
    let count = |sql: &str| reopened.query_admin(sql, &[]).unwrap()[0][0].int();
    assert_eq!(
        count("SELECT COUNT(*) FROM ix_txt"),
        texts,
        "code texts moved"
    );
    let text_pids = "SELECT cid FROM catalog WHERE name LIKE '%:text'";
    assert_eq!(
        count(&format!(
            "SELECT COUNT(*) FROM ix_str WHERE pid IN ({text_pids})"
        )),
        0
    );
    // The old value indexes are gone; updates still find and replace their rows.
    let indexes = match reopened.dialect() {
        Dialect::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' \
             AND name IN ('ix_tok_v', 'ix_ref_t', 'ix_num_v', 'ix_comp_v')"
        }
        Dialect::Postgres => {
            "SELECT COUNT(*) FROM pg_indexes \
             WHERE indexname IN ('ix_tok_v', 'ix_ref_t', 'ix_num_v', 'ix_comp_v')"
        }
    };
    assert_eq!(count(indexes), 0);
    recode_o1(&reopened);
}

/// After an upgrade, an update of the seeded `o1` to another code finds and replaces its old
/// token rows: the old code then matches `o2` alone.
fn recode_o1(s: &Store) {
    let mut o1 = s
        .read("Observation", "o1", &ALL)
        .unwrap()
        .found()
        .unwrap()
        .json()
        .unwrap();
    o1["code"]["coding"][0]["code"] = json!("2345-7");
    put(s, "Observation", "o1", o1);
    assert_eq!(
        search(s, "Observation", &[("code", "http://loinc.org|4548-4")]),
        ["o2"]
    );
}

/// Drops an index table of the embedded store: a posting-list view with its chunks, or a
/// plain table.
fn drop_sqlite_table(s: &Store, table: &str) -> String {
    let view = s
        .query_admin(
            "SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?",
            &[hutong_store::sql::Val::Text(table.to_string())],
        )
        .unwrap();
    if view.is_empty() {
        format!("DROP TABLE {table}")
    } else {
        format!("DROP VIEW {table}; DROP TABLE {table}_g")
    }
}

/// A schema 3 embedded store (a row per resource in the token, reference and code-text
/// tables) is rebuilt into posting lists when opened: same answers, and writes after it find
/// and replace their rows.
fn schema_3_stores_become_posting_lists(t: &TestStore) {
    use hutong_store::sql::Dialect;
    let s = &t.store;
    if s.dialect() != Dialect::Sqlite {
        return;
    }
    seed(s);
    let queries: [(&str, &str); 5] = [
        ("code", "http://loinc.org|4548-4"),
        ("subject", "Patient/p1"),
        ("code:text", "lab"),
        ("status", "final"),
        ("code:not", "http://loinc.org|4548-4"),
    ];
    let before: Vec<Vec<String>> = queries
        .iter()
        .map(|q| search(s, "Observation", &[*q]))
        .collect();
    let count = |s: &Store, t: &str| {
        s.query_admin(&format!("SELECT COUNT(*) FROM {t}"), &[])
            .unwrap()[0][0]
            .int()
    };
    let tables = [
        (
            "ix_tok",
            "shard, rid, pid, sid, code",
            "pid, code, sid, shard, rid",
        ),
        (
            "ix_ref",
            "shard, rid, pid, ttype, tid",
            "tid, ttype, pid, shard, rid",
        ),
        ("ix_txt", "shard, rid, pid, norm", "pid, norm, shard, rid"),
    ];
    let rows: Vec<i64> = tables.iter().map(|(t, ..)| count(s, t)).collect();
    assert!(rows.iter().all(|n| *n > 0), "{rows:?}");
    for (table, cols, key) in tables {
        s.batch_admin(&format!(
            "CREATE TABLE {table}_rows AS SELECT {cols} FROM {table}; \
             DROP VIEW {table}; DROP TABLE {table}_g; \
             CREATE TABLE {table} ({}, PRIMARY KEY ({key})) WITHOUT ROWID; \
             INSERT INTO {table} ({cols}) SELECT {cols} FROM {table}_rows; \
             DROP TABLE {table}_rows;",
            cols.split(", ")
                .map(|c| format!("{c} NOT NULL"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .unwrap();
    }
    s.exec_admin("UPDATE meta SET v = '3' WHERE k = 'schema'", &[])
        .unwrap();
    let reopened = Store::open(&t.location).unwrap();
    assert_eq!(
        reopened.meta("schema").unwrap(),
        Some(hutong_store::schema::SCHEMA_VERSION.to_string())
    );
    let kinds = reopened
        .query_admin(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'view' \
             AND name IN ('ix_tok', 'ix_ref', 'ix_txt')",
            &[],
        )
        .unwrap();
    assert_eq!(kinds[0][0].int(), 3, "the row tables became posting lists");
    let after: Vec<Vec<String>> = queries
        .iter()
        .map(|q| search(&reopened, "Observation", &[*q]))
        .collect();
    assert_eq!(before, after);
    let again: Vec<i64> = tables.iter().map(|(t, ..)| count(&reopened, t)).collect();
    assert_eq!(rows, again, "every row is in a posting list");
    recode_o1(&reopened);
    assert_eq!(
        count(&reopened, "ix_tok"),
        rows[0],
        "the update replaced its token rows"
    );
}

/// A value shared by thousands of one patient's resources fills many posting-list chunks on
/// the embedded store (a row table elsewhere): pages come in storage order with nothing
/// skipped or repeated, and resources leaving it — deleted or recoded, from the middle of a
/// chunk, from a chunk's start, whole runs — leave no trace, on both backends.
fn long_posting_lists_page_in_order(t: &TestStore) {
    let s = &t.store;
    put(s, "Patient", "p", json!({"resourceType": "Patient"}));
    let obs = |code: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}})
    };
    let ids: Vec<String> = (0..3000).map(|i| format!("o{i:04}")).collect();
    s.write(&AUDIT, |tx| {
        for id in &ids {
            tx.update("Observation", id, obs("8480-6"), None)?;
        }
        Ok::<_, StoreError>(())
    })
    .unwrap();
    let pages = |s: &Store| {
        let mut got: Vec<String> = Vec::new();
        let mut total = None;
        loop {
            let q = Query::parse(
                "Observation",
                &[
                    ("code".into(), "http://loinc.org|8480-6".into()),
                    ("subject".into(), "Patient/p".into()),
                    ("_count".into(), "250".into()),
                    ("_offset".into(), got.len().to_string()),
                    ("_total".into(), "accurate".into()),
                ],
                true,
            )
            .unwrap();
            let page = s.search(&q, &ALL).unwrap();
            total = total.or(page.total);
            assert!(
                !page.matches.is_empty() || !page.has_more,
                "a page that says more follows is empty, after {}",
                got.len()
            );
            got.extend(page.matches.iter().map(|m| m.id.clone()));
            if !page.has_more {
                break;
            }
        }
        (got, total.unwrap())
    };
    // One shard, rids in the order written: storage order is id order here.
    let (got, total) = pages(s);
    assert_eq!((got.len(), total), (3000, 3000));
    assert_eq!(got, ids);
    let mut kept: Vec<String> = Vec::new();
    s.write(&AUDIT, |tx| {
        for (i, id) in ids.iter().enumerate() {
            if i % 7 == 3 || (1200..1700).contains(&i) {
                tx.delete("Observation", id, None)?;
            } else if i % 11 == 0 {
                tx.update("Observation", id, obs("8462-4"), None)?;
            } else {
                kept.push(id.clone());
            }
        }
        Ok::<_, StoreError>(())
    })
    .unwrap();
    let (got, total) = pages(s);
    assert_eq!(total as usize, kept.len());
    assert_eq!(got, kept);
    // Back below the first chunk and into the middle of others, in a later transaction.
    s.write(&AUDIT, |tx| {
        for id in ["o0000", "o0011", "o2211"] {
            tx.update("Observation", id, obs("8480-6"), None)?;
        }
        Ok::<_, StoreError>(())
    })
    .unwrap();
    kept.extend(["o0000", "o0011", "o2211"].map(String::from));
    kept.sort();
    let (got, total) = pages(s);
    assert_eq!(total as usize, kept.len());
    assert_eq!(got, kept);
    assert_eq!(
        search(
            s,
            "Observation",
            &[("code", "http://loinc.org|8462-4"), ("_count", "1000")]
        )
        .len(),
        (0..3000)
            .filter(|i| i % 11 == 0 && i % 7 != 3 && !(1200..1700).contains(i))
            .count()
            - 3
    );
}

/// The value-first index tables have no key by resource: a resource's rows there are found
/// again from its stored body. Whatever versions come and go, no row outlives its version.
fn index_rows_follow_the_current_version(t: &TestStore) {
    let s = &t.store;
    let obs = |code: &str, text: &str, patient: &str, value: f64| {
        json!({"resourceType": "Observation", "status": "final",
            "subject": {"reference": format!("Patient/{patient}")},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": text},
            "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "%"},
            "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "%"}}]})
    };
    for p in ["p1", "p2"] {
        put(
            s,
            "Patient",
            p,
            json!({"resourceType": "Patient", "gender": "male"}),
        );
    }
    let tables = ["ix_tok", "ix_ref", "ix_num", "ix_comp", "ix_txt"];
    let counts = || {
        tables.map(|t| {
            s.query_admin(&format!("SELECT COUNT(*) FROM {t}"), &[])
                .unwrap()[0][0]
                .int()
        })
    };
    let patients = counts();
    put(s, "Observation", "a", obs("4548-4", "HbA1c", "p1", 7.2));
    put(s, "Observation", "b", obs("2345-7", "Glucose", "p1", 5.4));
    let two = counts();
    assert!(
        two.iter().zip(patients).all(|(n, p)| *n > p),
        "every table has rows of the Observations: {two:?}"
    );
    // New values everywhere (and another patient: the resource moves shard), twice.
    put(
        s,
        "Observation",
        "a",
        obs("718-7", "Hemoglobin", "p2", 13.1),
    );
    put(
        s,
        "Observation",
        "a",
        obs("789-8", "Erythrocytes", "p2", 4.7),
    );
    assert_eq!(counts(), two, "the old versions' rows are gone");
    for (param, value) in [
        ("code", "4548-4"),
        ("code", "718-7"),
        ("subject", "Patient/p1"),
        ("value-quantity", "7.2"),
        ("code:text", "hba1c"),
        ("code:text", "hemoglobin"),
        ("code-value-quantity", "4548-4$7.2"),
        ("code-value-quantity", "718-7$13.1"),
    ] {
        let found = search(s, "Observation", &[(param, value)]);
        assert!(
            !found.contains(&"a".to_string()),
            "{param}={value} still finds a: {found:?}"
        );
    }
    assert_eq!(search(s, "Observation", &[("code", "789-8")]), ["a"]);
    assert_eq!(
        search(s, "Observation", &[("subject", "Patient/p2")]),
        ["a"]
    );
    assert_eq!(search(s, "Observation", &[("code:text", "erythro")]), ["a"]);
    // Deleting leaves nothing of a resource; so does rewriting it within one transaction.
    s.write(&AUDIT, |tx| {
        tx.update("Observation", "b", obs("1-8", "One", "p2", 1.0), None)?;
        tx.update("Observation", "b", obs("2-6", "Two", "p1", 2.0), None)?;
        tx.delete("Observation", "b", None)
    })
    .unwrap();
    s.write(&AUDIT, |tx| tx.delete("Observation", "a", None))
        .unwrap();
    assert_eq!(counts(), patients, "{tables:?}");
}

/// A record's timeline orders by each resource's earliest clinical date (a death date
/// aside): read from the date index, it must be what the body's date values give.
fn clinical_times_come_from_the_index(t: &TestStore) {
    use hutong_fhir::index::{extract_kind, IndexValue};
    let s = &t.store;
    seed(s);
    put(
        s,
        "Patient",
        "p1",
        json!({"resourceType": "Patient", "birthDate": "1990-01-01",
            "deceasedDateTime": "1980-01-01T00:00:00Z"}),
    );
    put(
        s,
        "Condition",
        "c1",
        json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
            "onsetPeriod": {"start": "2021-05-01", "end": "2021-06-01"},
            "recordedDate": "2021-04-02T10:00:00+08:00"}),
    );
    put(
        s,
        "Encounter",
        "e1",
        json!({"resourceType": "Encounter", "status": "finished",
            "subject": {"reference": "Patient/p1"}}),
    );
    let mut e = hutong_store::search::Everything {
        patient: "p1".into(),
        count: 100,
        ..Default::default()
    };
    let mut items = s.everything(&e, &ALL).unwrap().matches;
    e.patient = "p2".into();
    items.extend(s.everything(&e, &ALL).unwrap().matches);
    assert!(items.len() >= 6, "{}", items.len());
    let from_bodies: Vec<Option<i64>> = items
        .iter()
        .map(|i| {
            extract_kind(&i.rtype, &i.json().unwrap(), hutong_fhir::ParamType::Date)
                .into_iter()
                .filter_map(|e| match e.value {
                    IndexValue::Date(r) if e.param != "death-date" => Some(r.lo),
                    _ => None,
                })
                .min()
        })
        .collect();
    assert_eq!(s.clinical_times(&items).unwrap(), from_bodies);
    assert!(from_bodies.contains(&None), "an undated Encounter");
    let born = hutong_fhir::date::parse("1990-01-01").unwrap().lo;
    assert!(
        from_bodies.contains(&Some(born)),
        "a death date is not a clinical time"
    );
}

/// A shard is a hash of the Patient id and the access decision opens records by shard: an
/// id whose hash another patient already holds (by chance, or crafted) is refused, with
/// everything in its transaction, and the other patient is not named.
fn shards_have_one_owner(t: &TestStore) {
    use hutong_store::sql::Val;
    let s = &t.store;
    seed(s);
    let owner = |shard: i64| {
        s.query_admin(
            "SELECT patient FROM shard_owner WHERE shard = ?",
            &[Val::Int(shard)],
        )
        .unwrap()
        .first()
        .map(|r| r[0].text().to_string())
    };
    assert_eq!(owner(hutong_store::shard_of("p1")).as_deref(), Some("p1"));
    // Stand-in for a colliding id: "evil"'s shard is already another patient's.
    s.exec_admin(
        "INSERT INTO shard_owner (shard, patient) VALUES (?, 'victim')",
        &[Val::Int(hutong_store::shard_of("evil"))],
    )
    .unwrap();
    let obs = |id: &str, patient: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"text": id}, "subject": {"reference": format!("Patient/{patient}")}})
    };
    let refused = s
        .write(&AUDIT, |tx| {
            tx.update("Observation", "mine", obs("mine", "p1"), None)?;
            tx.update("Observation", "theirs", obs("theirs", "evil"), None)
        })
        .unwrap_err();
    match &refused {
        StoreError::Conflict(m) => {
            assert!(m.contains("Patient/evil") && !m.contains("victim"), "{m}")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    for id in ["mine", "theirs"] {
        assert!(
            s.read("Observation", id, &ALL).unwrap().found().is_none(),
            "{id} must not be half-written"
        );
    }
    assert!(matches!(
        s.write(&AUDIT, |tx| tx.update(
            "Patient",
            "evil",
            json!({"resourceType": "Patient"}),
            None
        )),
        Err(StoreError::Conflict(_))
    ));
    // The rightful patient's writes go on.
    put(s, "Observation", "mine", obs("mine", "p1"));
    // A store made before shards had owners: its Patients claim theirs when it opens.
    s.exec_admin("DELETE FROM shard_owner", &[]).unwrap();
    s.exec_admin("DELETE FROM meta WHERE k = 'shard_owner'", &[])
        .unwrap();
    drop(Store::open(&t.location).unwrap());
    assert_eq!(owner(hutong_store::shard_of("p1")).as_deref(), Some("p1"));
    assert_eq!(owner(hutong_store::shard_of("p2")).as_deref(), Some("p2"));
    assert_eq!(owner(hutong_store::shard_of("evil")), None);
}

/// A bulk load may drop the value indexes on dates and strings and build them at its end:
/// answers stay the same meanwhile (rows written then included), and a store closed before
/// they were built (a killed load) gets them back when opened.
fn deferred_value_indexes(t: &TestStore) {
    use hutong_store::sql::Dialect;
    let s = &t.store;
    seed(s);
    let queries: [(&str, &str, &str); 5] = [
        ("Patient", "birthdate", "1990"),
        ("Patient", "birthdate", "lt1990-01-01"),
        ("Patient", "name", "zoe"),
        ("Observation", "date", "ge2024-02-01"),
        ("Observation", "date", "lt2024-03"),
    ];
    let answers = |s: &Store| -> Vec<Vec<String>> {
        queries
            .iter()
            .map(|(t, p, v)| search(s, t, &[(*p, *v)]))
            .collect()
    };
    let indexes = |s: &Store| {
        let names: Vec<String> = hutong_store::schema::DEFERRABLE
            .iter()
            .map(|n| format!("'{n}'"))
            .collect();
        s.query_admin(
            &format!(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name IN ({})",
                names.join(", ")
            ),
            &[],
        )
        .unwrap()[0][0]
            .int()
    };
    let before = answers(s);
    assert_eq!(before[0], ["p1"]);
    assert_eq!(before[3], ["o2", "o3"]);
    let sqlite = s.dialect() == Dialect::Sqlite;
    assert_eq!(s.defer_value_indexes().unwrap(), sqlite);
    if !sqlite {
        // PostgreSQL keeps its indexes; building them again is a no-op.
        s.build_value_indexes().unwrap();
        assert_eq!(answers(s), before);
        return;
    }
    assert_eq!(indexes(s), 0);
    assert_eq!(answers(s), before);
    // Written while they are gone, found once they are back.
    put(
        s,
        "Patient",
        "p3",
        json!({"resourceType": "Patient", "name": [{"family": "Zoe"}], "birthDate": "1990-06-01"}),
    );
    s.build_value_indexes().unwrap();
    assert_eq!(indexes(s), 3);
    assert_eq!(search(s, "Patient", &[("birthdate", "1990")]), ["p1", "p3"]);
    assert_eq!(search(s, "Patient", &[("name", "zoe")]), ["p2", "p3"]);
    // A load killed before it built them: the next open does.
    s.defer_value_indexes().unwrap();
    assert_eq!(indexes(s), 0);
    let reopened = Store::open(&t.location).unwrap();
    assert_eq!(indexes(&reopened), 3);
    assert_eq!(
        search(&reopened, "Patient", &[("birthdate", "1990")]),
        ["p1", "p3"]
    );
}

/// Every version written is logged in its transaction; a consumer reads the log from its
/// cursor in commit order, a failed transaction leaves nothing, and what every consumer has
/// read is pruned. On PostgreSQL a transaction that took its id first but has not committed
/// holds back those after it, so a cursor never passes a change that may still appear.
fn change_log_in_commit_order(t: &TestStore) {
    use hutong_store::changelog;
    let s = &t.store;
    put(s, "Patient", "before", json!({"resourceType": "Patient"}));
    let opened = s.change_cursor("test").unwrap();
    // A new consumer starts at the end — on PostgreSQL just behind the oldest transaction
    // still running anywhere in the cluster, so it may yet see changes from before it began.
    // A marker written after the cursor was taken shows where "before" ends: once it is
    // visible, everything ahead of it is too.
    put(s, "Patient", "marker", json!({"resourceType": "Patient"}));
    let mut before = Vec::new();
    for _ in 0..600 {
        before = s.changes_after(opened, 100).unwrap();
        if before.iter().any(|c| c.id == "marker") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (last, earlier) = before.split_last().expect("the marker is logged");
    assert_eq!(last.id, "marker", "{before:?}");
    assert!(earlier.iter().all(|c| c.id == "before"), "{before:?}");
    s.with_admin_tx(|c| changelog::set_cursor(c, "test", last.at))
        .unwrap();
    let start = last.at;
    put(s, "Patient", "c1", json!({"resourceType": "Patient"}));
    s.write(&AUDIT, |tx| {
        tx.update(
            "Patient",
            "c1",
            json!({"resourceType": "Patient", "active": true}),
            None,
        )?;
        tx.update(
            "Observation",
            "o1",
            json!({"resourceType": "Observation", "status": "final",
            "subject": {"reference": "Patient/c1"}}),
            None,
        )
    })
    .unwrap();
    let _ = s.write(&AUDIT, |tx| {
        tx.update("Patient", "lost", json!({"resourceType": "Patient"}), None)?;
        Err::<(), _>(StoreError::Invalid("boom".into()))
    });
    s.write(&AUDIT, |tx| tx.delete("Observation", "o1", None))
        .unwrap();
    // On PostgreSQL the rows wait for every older transaction in the cluster (other tests'
    // included) to end: give them the time that takes.
    let mut got = Vec::new();
    for _ in 0..600 {
        got = s.changes_after(start, 100).unwrap();
        if got.len() >= 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let seen: Vec<(String, i64, bool)> = got
        .iter()
        .map(|c| (format!("{}/{}", c.rtype, c.id), c.version, c.deleted))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("Patient/c1".to_string(), 1, false),
            ("Patient/c1".to_string(), 2, false),
            ("Observation/o1".to_string(), 1, false),
            ("Observation/o1".to_string(), 2, true),
        ]
    );
    assert_eq!(got[2].shard, hutong_store::shard_of("c1"));
    // Each version's tokens travel with it (what a subscription on a code is decided on);
    // a deletion has none.
    let toks: Vec<(String, String, String)> =
        changelog::parse_tokens(got[2].tokens.as_deref().unwrap())
            .map(|(p, s, c)| (p.into(), s.into(), c.into()))
            .collect();
    assert!(
        toks.iter().any(|(p, _, c)| p == "status" && c == "final"),
        "{toks:?}"
    );
    assert_eq!(got[3].tokens, None);
    assert_eq!(s.change_backlog("test").unwrap(), 4);
    // Only part of it read: the cursor moves in the consumer's own transaction.
    s.with_admin_tx(|c| {
        let at = changelog::lock_cursor(c, "test")?;
        assert_eq!(at, start);
        changelog::set_cursor(c, "test", got[1].at)
    })
    .unwrap();
    let rest = s
        .changes_after(s.change_cursor("test").unwrap(), 100)
        .unwrap();
    assert_eq!(rest, got[2..].to_vec());
    assert!(s.prune_changes().unwrap() >= 2);
    assert_eq!(
        s.changes_after(Default::default(), 100).unwrap(),
        got[2..].to_vec()
    );

    if s.dialect() == hutong_store::sql::Dialect::Postgres {
        // A writer that has begun (and holds a transaction id) but not committed.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (began, started) = std::sync::mpsc::channel::<()>();
        let slow = {
            let s = s.clone();
            std::thread::spawn(move || {
                s.write(&AUDIT, |tx| {
                    tx.update("Patient", "slow", json!({"resourceType": "Patient"}), None)?;
                    tx.conn().query("SELECT pg_current_xact_id()::text", &[])?;
                    let _ = began.send(());
                    let _ = wait.recv();
                    Ok::<_, StoreError>(())
                })
                .unwrap()
            })
        };
        started.recv().unwrap();
        put(s, "Patient", "fast", json!({"resourceType": "Patient"}));
        let from = got[3].at;
        assert!(
            s.changes_after(from, 100).unwrap().is_empty(),
            "a change committed behind a running transaction waits for it"
        );
        go.send(()).unwrap();
        slow.join().unwrap();
        let mut ids: Vec<String> = Vec::new();
        for _ in 0..600 {
            ids = s
                .changes_after(from, 100)
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect();
            if ids.len() >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(ids, ["slow", "fast"]);
    }
}

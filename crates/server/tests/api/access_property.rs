//! The access decision as a property: for random regions (institutions, residents registered
//! at some of them, ordinary and sensitive records, items the resident restricted), random
//! grants (to institutions and proxies; active, proposed, revoked, expired; naming sensitive
//! categories or not) and random readers, no response on any read path — read, search with
//! `_include`/`_revinclude`/chains/`_has`, counts, history, compartment search, the patient's
//! and the person's `$everything`, `$summary`, `$match`, PIXm — contains a resource, or a
//! reference to one, that an independent model of the rules forbids; and every count equals
//! the number the model allows.

use std::collections::{BTreeSet, HashMap};

use hutong_access::grants::{Grant, Grantee, Method, Status};
use hutong_access::principal::{Kind, Principal, Role, Scopes};
use hutong_fhir::security::{self, HIV_STI, MENTAL_HEALTH, RESIDENT_RESTRICTED};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_pg_app, TestApp};

const ID_SYSTEM: &str = "urn:oid:2.16.156.10011.1.3";

#[derive(Debug, Clone)]
struct Spec {
    institutions: usize,
    /// Per resident: the institutions (indexes) that registered them.
    residents: Vec<Vec<usize>>,
    /// Per registration (resident, institution): records as (code kind) 0 ordinary,
    /// 1 mental health, 2 HIV; restricted by the resident when the flag is set.
    records: Vec<(u8, bool)>,
    /// Grants: (grantee institution or resident, of whose record, categories, state).
    grants: Vec<(GSpec, usize, u32, u8)>,
    /// Readers: institution clinicians and systems, residents, a steward.
    readers: Vec<RSpec>,
}

#[derive(Debug, Clone, Copy)]
enum GSpec {
    Inst(usize),
    Proxy(usize),
}

#[derive(Debug, Clone, Copy)]
enum RSpec {
    Clinician(usize),
    System(usize),
    Resident(usize),
    Steward,
}

fn spec() -> impl Strategy<Value = Spec> {
    (2usize..=3, 2usize..=4).prop_flat_map(|(ni, nr)| {
        (
            Just(ni),
            proptest::collection::vec(
                proptest::sample::subsequence((0..ni).collect::<Vec<_>>(), 1..=ni),
                nr,
            ),
            proptest::collection::vec((0u8..3, proptest::bool::weighted(0.2)), 24),
            proptest::collection::vec(
                (
                    prop_oneof![
                        (0..ni).prop_map(GSpec::Inst),
                        (0..nr).prop_map(GSpec::Proxy)
                    ],
                    0..nr,
                    prop_oneof![
                        Just(0u32),
                        Just(MENTAL_HEALTH),
                        Just(HIV_STI | security::RESTRICTED)
                    ],
                    0u8..4,
                ),
                0..5,
            ),
            proptest::collection::vec(
                prop_oneof![
                    (0..ni).prop_map(RSpec::Clinician),
                    (0..ni).prop_map(RSpec::System),
                    (0..nr).prop_map(RSpec::Resident),
                    Just(RSpec::Steward),
                ],
                3,
            ),
        )
            .prop_map(|(institutions, residents, records, grants, readers)| Spec {
                institutions,
                residents,
                records,
                grants,
                readers,
            })
    })
}

/// What the model knows of each stored resource.
#[derive(Debug, Clone)]
struct Item {
    rtype: &'static str,
    /// Submitting institution (index), `None` for the platform's (Person, Consent).
    inst: Option<usize>,
    resident: Option<usize>,
    sens: u32,
}

struct World {
    sources: Vec<String>,
    items: HashMap<String, Item>,
    /// Per resident: their Person id and Patient ids.
    persons: Vec<String>,
    patients: Vec<Vec<String>>,
    /// Grants in force: (grantee, resident, opened bits).
    in_force: Vec<(GSpec, usize, u32)>,
}

fn id_number(r: usize) -> String {
    hutong_cn::idcard::make(330106, 1960 + r as u32, 3, 10 + r as u32, 2 * r as u32 + 10)
}

async fn build(app: &TestApp, s: &Spec) -> World {
    let sources: Vec<String> = (0..s.institutions)
        .map(|i| format!("urn:hutong:org:PROP{i}"))
        .collect();
    let mut items = HashMap::new();
    for i in 0..s.institutions {
        let id = format!("org{i}");
        app.put(
            &format!("Organization/{id}"),
            json!({"resourceType": "Organization", "id": id, "name": format!("机构{i}")}),
        )
        .await;
        items.insert(
            format!("Organization/{id}"),
            Item {
                rtype: "Organization",
                inst: None,
                resident: None,
                sens: 0,
            },
        );
    }
    let mut patients = vec![Vec::new(); s.residents.len()];
    let mut rec = s.records.iter().cycle();
    let names = ["欧阳雪", "司马光", "诸葛亮", "上官婉"];
    for (r, at) in s.residents.iter().enumerate() {
        for &i in at {
            let tok = app.system(&sources[i]);
            let p = app
                .send_as(&tok, "POST", "Patient", Some(json!({"resourceType": "Patient",
                    "identifier": [{"system": ID_SYSTEM, "value": id_number(r)}, {"system": format!("urn:mrn:{i}"), "value": format!("m{r}")}],
                    "name": [{"text": names[r]}], "gender": "male",
                    "birthDate": format!("{}-03-{}", 1960 + r, 10 + r),
                    "telecom": [{"system": "phone", "value": format!("1380000000{r}")}]})), &[])
                .await;
            assert_eq!(p.status, 201, "{}", p.body);
            let pid = p.body["id"].as_str().unwrap().to_string();
            items.insert(
                format!("Patient/{pid}"),
                Item {
                    rtype: "Patient",
                    inst: Some(i),
                    resident: Some(r),
                    sens: 0,
                },
            );
            patients[r].push(pid.clone());
            for _ in 0..2 {
                let (kind, restricted) = *rec.next().unwrap();
                let (rtype, body, sens) = match kind {
                    0 => (
                        "Observation",
                        json!({"resourceType": "Observation", "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                        "subject": {"reference": format!("Patient/{pid}")}, "effectiveDateTime": "2026-01-01"}),
                        0,
                    ),
                    1 => (
                        "Condition",
                        json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{pid}")},
                        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "F32.9"}]}}),
                        MENTAL_HEALTH,
                    ),
                    _ => (
                        "Condition",
                        json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{pid}")},
                        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "B20"}]}}),
                        HIV_STI,
                    ),
                };
                let c = app.send_as(&tok, "POST", rtype, Some(body), &[]).await;
                assert_eq!(c.status, 201, "{}", c.body);
                let id = c.body["id"].as_str().unwrap().to_string();
                let mut sens = sens;
                if restricted {
                    let store = app.engine.store.clone();
                    let (t, i2) = (rtype.to_string(), id.clone());
                    let audit = hutong_audit::Entry {
                        action: "restrict".into(),
                        ..Default::default()
                    };
                    tokio::task::spawn_blocking(move || {
                        store
                            .write(&audit.hook(), |tx| {
                                tx.set_resident_restricted(&t, &i2, true)
                            })
                            .unwrap();
                    })
                    .await
                    .unwrap();
                    sens |= RESIDENT_RESTRICTED;
                }
                items.insert(
                    format!("{rtype}/{id}"),
                    Item {
                        rtype,
                        inst: Some(i),
                        resident: Some(r),
                        sens,
                    },
                );
            }
        }
    }
    // One person per resident.
    let mut persons = Vec::new();
    for (r, pts) in patients.iter().enumerate() {
        let found = app.get(&format!("Person?link=Patient/{}", pts[0])).await;
        let person = found.body["entry"][0]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        for p in pts {
            let again = app.get(&format!("Person?link=Patient/{p}")).await;
            assert_eq!(
                again.body["entry"][0]["resource"]["id"],
                person.as_str(),
                "resident {r} is one person"
            );
        }
        items.insert(
            format!("Person/{person}"),
            Item {
                rtype: "Person",
                inst: None,
                resident: Some(r),
                sens: 0,
            },
        );
        persons.push(person);
    }
    // Grants, written as the platform, in every state.
    let now = hutong_fhir::date::now_ms();
    let mut in_force = Vec::new();
    for (n, (to, r, cats, state)) in s.grants.iter().enumerate() {
        let (grantee, method) = match to {
            GSpec::Inst(i) => (Grantee::Institution(sources[*i].clone()), Method::Sms),
            GSpec::Proxy(p) if *p == *r => continue,
            GSpec::Proxy(p) => (Grantee::Person(persons[*p].clone()), Method::Proxy),
        };
        let (status, start, end) = match state {
            0 => (Status::Active, now - 1000, Some(now + 3_600_000)),
            1 => (Status::Proposed, now - 1000, Some(now + 3_600_000)),
            2 => (Status::Inactive, now - 1000, Some(now)),
            _ => (Status::Active, now - 7_200_000, Some(now - 3_600_000)),
        };
        let g = Grant {
            id: format!("prop-grant-{n}"),
            person: persons[*r].clone(),
            patient: patients[*r][0].clone(),
            grantee,
            grantee_name: None,
            method,
            status,
            categories: *cats,
            start,
            end,
            requested_by: None,
            reason: None,
            recorded: now,
        };
        let e = app.engine.clone();
        let g2 = g.clone();
        tokio::task::spawn_blocking(move || hutong_server::consent::record_grant(&e, &g2).unwrap())
            .await
            .unwrap();
        items.insert(
            format!("Consent/{}", g.id),
            Item {
                rtype: "Consent",
                inst: None,
                resident: Some(*r),
                sens: security::ACCESS_RECORD,
            },
        );
        if state == &0 {
            in_force.push((*to, *r, security::opens(*cats)));
        }
    }
    World {
        sources,
        items,
        persons,
        patients,
        in_force,
    }
}

/// The model of the rules, written from the words, not from the implementation.
fn allowed(w: &World, reader: RSpec, it: &Item) -> bool {
    if it.rtype == "Organization" {
        return true;
    }
    match reader {
        RSpec::Clinician(i) | RSpec::System(i) => {
            if it.inst == Some(i) {
                return true;
            }
            let Some(r) = it.resident else { return false };
            w.in_force.iter().any(|(to, gr, open)| {
                matches!(to, GSpec::Inst(x) if *x == i) && *gr == r && it.sens & !open == 0
            })
        }
        RSpec::Resident(me) => {
            let Some(r) = it.resident else { return false };
            if r == me {
                return true;
            }
            // A proxy manages the record: the person's authorizations and access records
            // open with the categories the grant names.
            w.in_force.iter().any(|(to, gr, open)| {
                matches!(to, GSpec::Proxy(x) if *x == me)
                    && *gr == r
                    && it.sens & !(open | security::ACCESS_RECORD) == 0
            })
        }
        RSpec::Steward => {
            matches!(it.rtype, "Patient" | "Person") && it.sens & !security::ACCESS_RECORD == 0
        }
    }
}

fn token(app: &TestApp, w: &World, r: RSpec) -> String {
    match r {
        RSpec::Clinician(i) => app.clinician(&w.sources[i]),
        RSpec::System(i) => app.system(&w.sources[i]),
        RSpec::Resident(p) => app.resident(&w.persons[p]),
        RSpec::Steward => app.token_for(&Principal {
            kind: Kind::Operator,
            subject: "steward".into(),
            name: None,
            institution: None,
            practitioner: None,
            person: None,
            roles: vec![Role::IdentitySteward],
            scopes: Scopes::parse("user/*.rs"),
            booking: false,
        }),
    }
}

/// Every `Type/id` the response mentions: resources it contains and references it makes.
fn mentioned(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            if let (Some(Value::String(t)), Some(Value::String(id))) =
                (o.get("resourceType"), o.get("id"))
            {
                out.insert(format!("{t}/{id}"));
            }
            if let Some(Value::String(r)) = o.get("reference") {
                let r = r.split("/_history").next().unwrap_or(r);
                out.insert(r.to_string());
            }
            for x in o.values() {
                mentioned(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| mentioned(x, out)),
        _ => {}
    }
}

async fn check(app: &TestApp, s: &Spec) {
    let w = build(app, s).await;
    let mut paths: Vec<String> = vec![
        "Observation?_total=accurate".into(),
        "Condition?_summary=count".into(),
        "Patient?_revinclude=Observation:subject&_revinclude=Condition:subject&_count=100".into(),
        "Observation?_include=Observation:subject&_count=100".into(),
        "Condition?_total=accurate&_count=2".into(),
        "Patient?_has:Condition:subject:code=F32.9".into(),
        "Observation/_history?_count=100".into(),
        "_history?_count=200".into(),
        "Consent?_count=100".into(),
        "Person?_count=100".into(),
    ];
    for (r, pts) in w.patients.iter().enumerate() {
        paths.push(format!(
            "Observation?subject:Patient.identifier={ID_SYSTEM}|{}",
            id_number(r)
        ));
        paths.push(format!(
            "Patient/$ihe-pix?sourceIdentifier={ID_SYSTEM}|{}",
            id_number(r)
        ));
        for p in pts {
            paths.push(format!("Patient/{p}/$everything"));
            paths.push(format!("Patient/{p}/Condition"));
        }
        paths.push(format!("Person/{}/$everything", w.persons[r]));
        paths.push(format!("Person/{}/$summary", w.persons[r]));
    }
    for key in w.items.keys() {
        paths.push(key.clone());
        paths.push(format!("{key}/_history"));
    }
    for &reader in &s.readers {
        let tok = token(app, &w, reader);
        let visible_obs = w
            .items
            .values()
            .filter(|i| i.rtype == "Observation" && allowed(&w, reader, i))
            .count();
        let visible_cond = w
            .items
            .values()
            .filter(|i| i.rtype == "Condition" && allowed(&w, reader, i))
            .count();
        for path in &paths {
            let res = app.send_as(&tok, "GET", path, None, &[]).await;
            assert!(res.status < 500, "{path}: {}", res.body);
            let mut seen = BTreeSet::new();
            mentioned(&res.body, &mut seen);
            for m in &seen {
                if let Some(it) = w.items.get(m) {
                    assert!(
                        allowed(&w, reader, it),
                        "{reader:?} got {m} ({it:?}) from GET {path}"
                    );
                }
            }
            if path == "Observation?_total=accurate" && res.status == 200 {
                assert_eq!(res.body["total"], visible_obs, "{reader:?}: {path}");
            }
            if path.starts_with("Condition?") && res.status == 200 {
                assert_eq!(res.body["total"], visible_cond, "{reader:?}: {path}");
            }
        }
        // $match by each resident's demographics.
        for r in 0..w.persons.len() {
            let body = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {
                "resourceType": "Patient", "identifier": [{"system": ID_SYSTEM, "value": id_number(r)}],
                "birthDate": format!("{}-03-{}", 1960 + r, 10 + r)}}]});
            let res = app
                .send_as(&tok, "POST", "Patient/$match", Some(body), &[])
                .await;
            let mut seen = BTreeSet::new();
            mentioned(&res.body, &mut seen);
            for m in &seen {
                if let Some(it) = w.items.get(m) {
                    assert!(allowed(&w, reader, it), "{reader:?} got {m} from $match");
                }
            }
        }
    }
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Each case is a whole region on a fresh server: shrinking would take long.
        max_shrink_iters: 20,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(12))]
    #[test]
    fn no_response_contains_what_the_decision_forbids(s in spec()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let app = spawn_app().await;
            check(&app, &s).await;
        });
    }
}

proptest! {
    #![proptest_config(config(3))]
    #[test]
    fn no_response_contains_what_the_decision_forbids_on_postgres(s in spec()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            if let Some(app) = spawn_pg_app().await {
                check(&app, &s).await;
            }
        });
    }
}

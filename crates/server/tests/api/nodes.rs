//! The platform hierarchy on loopback ports: a province, a city and two district nodes,
//! each its own server and store. Records go up with their origin and route, come down to
//! the district of the resident they concern (and only there), are applied once however
//! often they are sent, and what an upstream refuses comes back to the institution that
//! submitted it as a finding and a work order.

use std::time::Duration;

use hutong_access::accounts::Client;
use hutong_access::principal::{Kind, Principal, Scopes};
use hutong_exchange::node::{self, Node, Upstream};
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, spawn_pg_app_with, TestApp};

/// A hospital of the city (submits at the city node) and a health centre of district 1
/// (submits at district 1's node).
const CITY_HOSPITAL: &str = "urn:hutong:org:91330100CH";
const D1_CENTRE: &str = "urn:hutong:org:91330106D1";
/// A clinic of district 2.
const D2_CLINIC: &str = "urn:hutong:org:91330102D2";

/// Registers `id` as a node's platform client at `app`; its secret.
fn node_client(app: &TestApp, id: &str) -> String {
    tokio::task::block_in_place(|| {
        app.engine
            .access
            .accounts
            .add_client(&Client {
                client_id: id.into(),
                kind: Kind::Platform,
                institution: None,
                name: format!("node {id}"),
                scopes: Scopes::parse("system/*.cruds"),
                booking: false,
            })
            .unwrap()
    })
}

fn as_node(
    id: &str,
    level: &str,
    district: Option<&str>,
    upstream: Option<(&TestApp, String)>,
) -> Node {
    Node::new(
        id,
        level,
        district.map(String::from),
        upstream.map(|(app, secret)| Upstream {
            url: app.base.clone(),
            secret,
        }),
        None,
    )
    .unwrap()
}

struct Hierarchy {
    province: TestApp,
    city: TestApp,
    d1: TestApp,
    d2: TestApp,
}

/// Province ← city ← district 1 (西湖区 330106), district 2 (上城区 330102). The city's
/// data set is stricter than the districts' (a result without its time is refused there).
/// With `pg`, the city runs on PostgreSQL (`None` when no server answers, outside CI).
async fn hierarchy(pg: bool) -> Option<Hierarchy> {
    let province = spawn_app_with(|s| s.node = Some(as_node("zj", "province", None, None))).await;
    let secret = node_client(&province, "hz");
    let city_settings = |s: &mut hutong_server::Settings| {
        s.node = Some(as_node("hz", "city", None, Some((&province, secret))));
        s.rules =
            hutong_quality::Rules::from_toml("[rules.data-set]\nseverity = \"error\"\n").unwrap();
    };
    let city = if pg {
        spawn_pg_app_with(city_settings).await?
    } else {
        spawn_app_with(city_settings).await
    };
    let (s1, s2) = (node_client(&city, "xihu"), node_client(&city, "shangcheng"));
    let d1 = spawn_app_with(|s| {
        s.node = Some(as_node(
            "xihu",
            "district",
            Some("330106"),
            Some((&city, s1)),
        ))
    })
    .await;
    let d2 = spawn_app_with(|s| {
        s.node = Some(as_node(
            "shangcheng",
            "district",
            Some("330102"),
            Some((&city, s2)),
        ))
    })
    .await;
    // Each node has asked its upstream for what it should be sent (what changes before that
    // is not theirs) before the test writes anything.
    for (app, sub) in [
        (&province, "hz-identity"),
        (&city, "xihu-identity"),
        (&city, "shangcheng-identity"),
        (&city, "xihu-push"),
        (&city, "shangcheng-push"),
    ] {
        let mut made = false;
        for _ in 0..600 {
            if app.get(&format!("Subscription/{sub}/$status")).await.status == 200 {
                made = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(made, "{sub} was never made");
    }
    Some(Hierarchy {
        province,
        city,
        d1,
        d2,
    })
}

const ID_SYSTEM: &str = "urn:oid:2.16.156.10011.1.3";

/// A resident of 西湖区 (district 1).
fn patient(id_number: &str) -> Value {
    json!({"resourceType": "Patient",
        "identifier": [{"system": ID_SYSTEM, "value": id_number}],
        "name": [{"text": "林晓梅", "family": "林", "given": ["晓梅"]}],
        "gender": "female", "birthDate": "1968-03-12",
        "address": [{"line": ["文三路 8 号"], "district": "西湖区", "city": "杭州市"}]})
}

async fn create(app: &TestApp, token: &str, v: Value) -> String {
    let t = v["resourceType"].as_str().unwrap().to_string();
    let r = app.send_as(token, "POST", &t, Some(v), &[]).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

/// Waits until `path` reads 200 at `app` (as the platform): the resource.
async fn arrives(app: &TestApp, path: &str) -> Value {
    for _ in 0..300 {
        let r = app.get(path).await;
        if r.status == 200 {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never arrived at {}", app.base);
}

/// Waits until `f` holds (up to 15 s).
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out: {what}");
}

/// The node's upstream backlog, from `$node`.
async fn backlog(app: &TestApp) -> i64 {
    let r = app.get("$node").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "upstream")
        .and_then(|p| {
            p["part"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == "backlog")
        })
        .and_then(|x| x["valueInteger"].as_i64())
        .unwrap()
}

async fn drained(app: &TestApp) {
    for _ in 0..300 {
        if backlog(app).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the backlog of {} never drained", app.base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_move_up_and_down_the_hierarchy() {
    moves(hierarchy(false).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_move_through_a_city_on_postgres() {
    if let Some(h) = hierarchy(true).await {
        moves(h).await;
    }
}

async fn moves(h: Hierarchy) {
    let hospital = h.city.system(CITY_HOSPITAL);
    // A city hospital sees a resident of district 1 and records her diabetes.
    let p = create(&h.city, &hospital, patient("330106196803120025")).await;
    let c = create(
        &h.city,
        &hospital,
        json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{p}")},
               "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9", "display": "2型糖尿病"}]},
               "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
               "recordedDate": "2026-12-01"}),
    )
    .await;
    // Up: the province has it, submitted by the hospital, routed through the city, and its
    // locator knows where the person's records are.
    let up = arrives(&h.province, &format!("Condition/{c}")).await;
    assert_eq!(up["meta"]["source"], CITY_HOSPITAL);
    assert_eq!(node::route_of(&up), ["hz"]);
    assert_eq!(node::origin_version(&up), Some(1));
    arrives(&h.province, &format!("Patient/{p}")).await;
    let loc = h
        .province
        .get(&format!(
            "Patient/$record-locator?identifier={ID_SYSTEM}|330106196803120025"
        ))
        .await;
    assert_eq!(loc.status, 200, "{}", loc.body);
    let nodes: Vec<&str> = loc.body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["part"].as_array().unwrap())
        .filter(|x| x["name"] == "node")
        .map(|x| x["valueString"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["hz"]);
    // Down: district 1 (her district) has the diagnosis and the resident; district 2 not.
    let down = arrives(&h.d1, &format!("Condition/{c}")).await;
    assert_eq!(down["meta"]["source"], CITY_HOSPITAL);
    assert!(node::pushed_down(&down));
    assert_eq!(node::route_of(&down), ["hz"]);
    arrives(&h.d1, &format!("Patient/{p}")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.d2.get(&format!("Condition/{c}")).await.status, 404);
    // What came down is not sent back up (district 1's outbox drains without it).
    drained(&h.d1).await;
    let hist = h.city.get(&format!("Condition/{c}/_history")).await;
    assert_eq!(hist.body["total"], 1, "{}", hist.body);

    // A district 1 centre's own records go up through the city to the province, with the
    // route they took and the version they had at the origin.
    let centre = h.d1.system(D1_CENTRE);
    let q = create(&h.d1, &centre, patient("330106195501010011")).await;
    let o = create(
        &h.d1,
        &centre,
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
               "subject": {"reference": format!("Patient/{q}")},
               "effectiveDateTime": "2026-12-01T08:00:00+08:00",
               "valueQuantity": {"value": 7.1, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}),
    )
    .await;
    let mut changed = h.d1.get(&format!("Observation/{o}")).await.body;
    changed["valueQuantity"]["value"] = json!(7.3);
    let r =
        h.d1.send_as(
            &centre,
            "PUT",
            &format!("Observation/{o}"),
            Some(changed),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for _ in 0..300 {
        if h.province.get(&format!("Observation/{o}")).await.body["valueQuantity"]["value"]
            == json!(7.3)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_province = h.province.get(&format!("Observation/{o}")).await.body;
    assert_eq!(at_province["valueQuantity"]["value"], json!(7.3));
    assert_eq!(at_province["meta"]["source"], D1_CENTRE);
    assert_eq!(node::route_of(&at_province), ["xihu", "hz"]);
    assert_eq!(node::origin_version(&at_province), Some(2));
    // Both versions, in order, at every level.
    let hist = h.province.get(&format!("Observation/{o}/_history")).await;
    assert_eq!(hist.body["total"], 2, "{}", hist.body);
    arrives(&h.province, &format!("Patient/{q}")).await;
    let loc = h
        .province
        .get(&format!("Patient/$record-locator?patient={q}"))
        .await;
    let mut nodes: Vec<&str> = loc.body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["part"].as_array().unwrap())
        .filter(|x| x["name"] == "node")
        .map(|x| x["valueString"].as_str().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["hz", "xihu"]);

    // Sent again (an answer lost on the way), nothing is written twice.
    let d1_token = h.city.token_for(&Principal::platform("xihu"));
    let v1 = h.d1.get(&format!("Observation/{o}/_history/1")).await.body;
    let again = node::history_bundle(&[node::Outgoing {
        rtype: "Observation".into(),
        id: o.clone(),
        version: 1,
        resource: Some(v1),
    }]);
    let r = h
        .city
        .send_as(&d1_token, "POST", "", Some(again), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["entry"][0]["response"]["status"], "200");
    assert!(
        r.body["entry"][0]["response"]["etag"].is_null(),
        "{}",
        r.body
    );
    let hist = h.city.get(&format!("Observation/{o}/_history")).await;
    assert_eq!(
        hist.body["total"], 2,
        "an old version does not overwrite the new"
    );
    assert_eq!(
        h.city.get(&format!("Observation/{o}")).await.body["valueQuantity"]["value"],
        json!(7.3)
    );

    // The city's data set requires a result's time; district 1 accepts one without (with a
    // warning). The city's refusal comes back to the centre as a finding and a work order,
    // and the outbox goes on.
    let bad = create(
        &h.d1,
        &centre,
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
               "subject": {"reference": format!("Patient/{q}")},
               "valueQuantity": {"value": 6.8, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}),
    )
    .await;
    drained(&h.d1).await;
    assert_eq!(h.city.get(&format!("Observation/{bad}")).await.status, 404);
    let orders =
        h.d1.send_as(
            &centre,
            "GET",
            "$work-orders?category=upstream-rejected",
            None,
            &[],
        )
        .await;
    assert_eq!(orders.status, 200, "{}", orders.body);
    let items = orders.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", orders.body);
    assert_eq!(items[0]["focus"], format!("Observation/{bad}"));
    let task =
        h.d1.send_as(
            &centre,
            "GET",
            items[0]["task"].as_str().unwrap(),
            None,
            &[],
        )
        .await;
    assert_eq!(task.status, 200, "{}", task.body);
    assert!(
        task.body["description"]
            .as_str()
            .unwrap()
            .contains("effective"),
        "{}",
        task.body
    );
    // The city quarantined it under the centre that submitted it, not the node.
    let quarantined = h.city.get("$quarantine").await;
    assert_eq!(
        quarantined.body["items"][0]["source"], D1_CENTRE,
        "{}",
        quarantined.body
    );
    // Later records still flow.
    let later = create(
        &h.d1,
        &centre,
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
               "subject": {"reference": format!("Patient/{q}")},
               "effectiveDateTime": "2026-12-02T08:00:00+08:00",
               "valueQuantity": {"value": 6.9, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}),
    )
    .await;
    arrives(&h.province, &format!("Observation/{later}")).await;

    // The diabetic resident is seen at district 1's centre too (its own Patient, the same ID
    // number): one person at the province, whose locator knows both nodes.
    let p_d1 = create(&h.d1, &centre, patient("330106196803120025")).await;
    let r_d1 = create(
        &h.d1,
        &centre,
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
               "subject": {"reference": format!("Patient/{p_d1}")},
               "effectiveDateTime": "2026-12-03T08:00:00+08:00",
               "valueQuantity": {"value": 8.1, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}),
    )
    .await;
    arrives(&h.province, &format!("Observation/{r_d1}")).await;
    let loc = h
        .province
        .get(&format!(
            "Patient/$record-locator?identifier={ID_SYSTEM}|330106196803120025"
        ))
        .await;
    let mut nodes: Vec<&str> = loc.body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["part"].as_array().unwrap())
        .filter(|x| x["name"] == "node")
        .map(|x| x["valueString"].as_str().unwrap())
        .collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes, ["hz", "xihu"], "{}", loc.body);

    // The locator answers only from what the asker may read: district 1's centre, asking
    // the province about the city hospital's Patient, learns nothing; about its own, it
    // learns where its own is, not the hospital's.
    let centre_at_province = h.province.system(D1_CENTRE);
    let hidden = h
        .province
        .send_as(
            &centre_at_province,
            "GET",
            &format!("Patient/$record-locator?patient={p}"),
            None,
            &[],
        )
        .await;
    assert_eq!(hidden.status, 200, "{}", hidden.body);
    assert!(
        hidden.body["parameter"].as_array().unwrap().is_empty(),
        "{}",
        hidden.body
    );
    let own = h
        .province
        .send_as(
            &centre_at_province,
            "GET",
            &format!("Patient/$record-locator?patient={p_d1}"),
            None,
            &[],
        )
        .await;
    let listed: Vec<&str> = own.body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["part"].as_array().unwrap())
        .filter(|x| x["name"] == "patient")
        .map(|x| x["valueReference"]["reference"].as_str().unwrap())
        .collect();
    assert!(
        !listed.is_empty() && listed.iter().all(|r| *r == format!("Patient/{p_d1}")),
        "{}",
        own.body
    );

    // She visits a clinic in district 2, which has none of her records; its clinician reads
    // her whole record through the region — with her consent only.
    let mut reg = patient("330106196803120025");
    reg["telecom"] = json!([{"system": "phone", "value": crate::access::PHONE}]);
    let p_d2 = create(&h.d2, &h.d2.system(D2_CLINIC), reg).await;
    let person = tokio::task::block_in_place(|| {
        h.d2.engine
            .matcher
            .person_of(&h.d2.engine.store, &format!("Patient/{p_d2}"))
    })
    .unwrap()
    .unwrap();
    let dr = h.d2.clinician(D2_CLINIC);
    let path = format!("Person/{person}/$regional-record");
    let refused = h.d2.send_as(&dr, "GET", &path, None, &[]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let asked =
        h.d2.send_as(
            &dr,
            "POST",
            &format!("Person/{person}/$request-access"),
            Some(crate::access::params(vec![
                json!({"name": "method", "valueCode": "sms"}),
                json!({"name": "hours", "valueInteger": 1}),
            ])),
            &[],
        )
        .await;
    assert_eq!(asked.status, 201, "{}", asked.body);
    let consent = asked.body["id"].as_str().unwrap().to_string();
    let sms = crate::access::outbox(&h.d2, crate::access::PHONE).await;
    let code = crate::access::code_in(&sms[0]);
    let ok =
        h.d2.send_as(
            &dr,
            "POST",
            &format!("Consent/{consent}/$verify-code"),
            Some(crate::access::params(vec![
                json!({"name": "code", "valueString": code}),
            ])),
            &[],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let record = h.d2.send_as(&dr, "GET", &path, None, &[]).await;
    assert_eq!(record.status, 200, "{}", record.body);
    let got: Vec<String> = record.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap_or(""),
                e["resource"]["id"].as_str().unwrap_or("")
            )
        })
        .collect();
    for want in [format!("Condition/{c}"), format!("Observation/{r_d1}")] {
        assert!(got.contains(&want), "{want} in {got:?}");
    }
    // Each node's trail has its part, linked by one trace id: district 2's (the clinician
    // asked), the city's (relayed) and the province's (read as that clinician).
    let trace_of = |ev: &Value| -> Option<String> {
        let d = ev["outcomeDesc"].as_str()?;
        let t = d.split("trace ").nth(1)?;
        Some(t.split(';').next()?.trim().to_string())
    };
    let action_of = |ev: &Value| -> String {
        ev["subtype"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["system"] == "https://hutong.dev/fhir/CodeSystem/audit-action")
            .and_then(|s| s["code"].as_str())
            .unwrap_or("")
            .to_string()
    };
    let at_d2 = audit_events(
        &h.d2,
        &format!("AuditEvent?entity=Person/{person}&_count=100"),
    )
    .await;
    let asked = at_d2
        .iter()
        .find(|e| action_of(e) == "regional-record" && e["outcome"] == "0")
        .unwrap_or_else(|| panic!("{at_d2:?}"));
    let trace = trace_of(asked).unwrap();
    let at_province = audit_events(
        &h.province,
        &format!("AuditEvent?entity=Condition/{c}&_count=100"),
    )
    .await;
    let read = at_province
        .iter()
        .find(|e| action_of(e) == "regional-record" && trace_of(e).as_deref() == Some(&trace))
        .unwrap_or_else(|| panic!("no province entry for trace {trace}: {at_province:?}"));
    assert_eq!(
        read["agent"][0]["who"]["identifier"]["value"],
        format!("dr@{D2_CLINIC}")
    );
    assert!(
        read["outcomeDesc"]
            .as_str()
            .unwrap()
            .contains("shangcheng,hz"),
        "{read}"
    );
    let at_city = audit_events(&h.city, "AuditEvent?_count=500").await;
    assert!(
        at_city
            .iter()
            .any(|e| action_of(e) == "regional-record-relay"
                && trace_of(e).as_deref() == Some(&trace)),
        "the city relayed it"
    );

    // The province's identity steward finds that district 1's registration is someone else
    // (a shared ID number) and splits it off: the split is sent down — the city and district
    // 1 keep the two apart too.
    let person_at = |app: &TestApp, patient: &str| {
        tokio::task::block_in_place(|| {
            app.engine
                .matcher
                .person_of(&app.engine.store, &format!("Patient/{patient}"))
        })
        .unwrap()
    };
    let together = person_at(&h.province, &p).unwrap();
    assert_eq!(person_at(&h.province, &p_d1), Some(together.clone()));
    for app in [&h.city, &h.d1] {
        eventually("one person before", || {
            person_at(app, &p).is_some() && person_at(app, &p) == person_at(app, &p_d1)
        })
        .await;
    }
    let steward = h
        .province
        .operator(&[hutong_access::principal::Role::IdentitySteward]);
    let split = h
        .province
        .send_as(
            &steward,
            "POST",
            &format!("Person/{together}/$split"),
            Some(crate::access::params(vec![
                json!({"name": "patient", "valueReference": {"reference": format!("Patient/{p_d1}")}}),
                json!({"name": "reason", "valueString": "两人共用一个身份证号"}),
            ])),
            &[],
        )
        .await;
    assert_eq!(split.status, 200, "{}", split.body);
    for (name, app) in [("the city", &h.city), ("district 1", &h.d1)] {
        eventually(&format!("the split reached {name}"), || {
            person_at(app, &p) != person_at(app, &p_d1)
        })
        .await;
    }

    // The steward finds it was the same person after all and merges them back: sent down too.
    let other = person_at(&h.province, &p_d1).unwrap();
    let merged = h
        .province
        .send_as(
            &steward,
            "POST",
            &format!("Person/{together}/$merge"),
            Some(crate::access::params(vec![
                json!({"name": "source", "valueReference": {"reference": format!("Person/{other}")}}),
                json!({"name": "reason", "valueString": "核实为同一人"}),
            ])),
            &[],
        )
        .await;
    assert_eq!(merged.status, 200, "{}", merged.body);
    for (name, app) in [("the city", &h.city), ("district 1", &h.d1)] {
        eventually(&format!("the merge reached {name}"), || {
            person_at(app, &p) == person_at(app, &p_d1)
        })
        .await;
    }

    // A forged credential is refused at the door.
    let forged = h
        .city
        .send_as(
            "forged.token",
            "POST",
            "",
            Some(node::history_bundle(&[])),
            &[],
        )
        .await;
    assert_eq!(forged.status, 401);
    // And an institution's client is not a node.
    let r = h
        .city
        .send_as(
            &h.city.system(CITY_HOSPITAL),
            "POST",
            "",
            Some(node::history_bundle(&[])),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
}

/// The AuditEvents `q` finds at `app`, its audit queue flushed first.
async fn audit_events(app: &TestApp, q: &str) -> Vec<Value> {
    tokio::task::block_in_place(|| app.flush_audit());
    let r = app.get(q).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e["resource"].clone())
        .collect()
}

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

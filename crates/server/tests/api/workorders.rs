//! Work orders, reconciliation and scorecards over HTTP, on SQLite and PostgreSQL: the
//! lifecycle with who may do what, escalation past the due date, orders the platform opens
//! itself (repeated rule failures, suspected wrong patient, reconciliation gaps), the
//! differences a manifest gets back, and the scorecard's figures in JSON, CSV and HTML.

use hutong_access::principal::Role;
use hutong_quality::reconcile::{Item, Manifest};
use serde_json::{json, Value};

use crate::helpers::TestApp;

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() {
                let app = crate::helpers::spawn_app_with(super::policy).await;
                super::$name(&app).await;
            } )*
        }
        mod on_postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() {
                if let Some(app) = crate::helpers::spawn_pg_app_with(super::policy).await {
                    super::$name(&app).await;
                }
            } )*
        }
    };
}

on_both!(
    a_work_order_goes_through_its_lifecycle,
    overdue_orders_escalate_and_the_platform_opens_its_own,
    reconciliation_names_the_differences,
    scorecards_add_up
);

/// Routine orders are due at once (so the sweep escalates them), three failures of a rule
/// open an order.
fn policy(s: &mut hutong_server::Settings) {
    s.rules = hutong_quality::Rules::from_toml(
        "[work-orders]\nsla_hours = { routine = 0 }\nrepeat_threshold = 3\n",
    )
    .unwrap();
}

const A: &str = "urn:hutong:org:91330106WA";
const B: &str = "urn:hutong:org:91330106WB";

fn params(p: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": p})
}

fn s(name: &str, v: &str) -> Value {
    json!({"name": name, "valueString": v})
}

async fn organisations(app: &TestApp) {
    for (id, uscc, name) in [
        ("wa", "91330106WA", "西湖医院"),
        ("wb", "91330106WB", "拱墅社区中心"),
    ] {
        let r = app
            .put(
                &format!("Organization/{id}"),
                json!({"resourceType": "Organization", "id": id, "name": name,
                    "identifier": [{"system": "https://hutong.dev/sid/uscc", "value": uscc}],
                    "address": [{"city": "杭州市", "district": if id == "wa" { "西湖区" } else { "拱墅区" }}]}),
            )
            .await;
        assert!(r.status < 300, "{}", r.body);
    }
}

async fn create(app: &TestApp, token: &str, v: Value) -> String {
    let t = v["resourceType"].as_str().unwrap().to_string();
    let r = app.send_as(token, "POST", &t, Some(v), &[]).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

fn patient(mrn: &str, name: &str, birth: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"text": name}], "gender": "female",
        "birthDate": birth, "identifier": [{"system": "urn:mrn:wa", "value": mrn}]})
}

fn glucose(patient: &str, value: f64, when: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "14771-0"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}})
}

async fn person_of(app: &TestApp, patient: &str) -> String {
    let r = app.get(&format!("Person?link=Patient/{patient}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn op(app: &TestApp, token: &str, task: &str, name: &str, p: Vec<Value>) -> (u16, Value) {
    let r = app
        .send_as(
            token,
            "POST",
            &format!("Task/{task}/${name}"),
            Some(params(p)),
            &[],
        )
        .await;
    (r.status, r.body)
}

fn business(t: &Value) -> &str {
    t["businessStatus"]["coding"][0]["code"].as_str().unwrap()
}

async fn queue(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let r = app
        .send_as(token, "GET", &format!("$work-orders?{query}"), None, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let items = r.body["items"].as_array().unwrap().clone();
    assert_eq!(
        r.body["total"].as_u64(),
        Some(items.len() as u64),
        "one page holds them all"
    );
    items
}

async fn a_work_order_goes_through_its_lifecycle(app: &TestApp) {
    organisations(app).await;
    let a = app.system(A);
    let doctor_a = app.clinician(A);
    let pa = create(app, &a, patient("w1", "李娜", "1975-04-02")).await;
    let obs = create(app, &a, glucose(&pa, 5.4, "2026-03-01T08:00:00+08:00")).await;
    let other = create(app, &a, patient("w2", "赵敏", "1990-01-09")).await;
    let me = app.resident(&person_of(app, &pa).await);
    let stranger = app.resident(&person_of(app, &other).await);

    // Someone else cannot report on my record: the access decision is asked first.
    let report = |focus: String| {
        params(vec![
            s("focus", &focus),
            json!({"name": "category", "valueCode": "not-mine"}),
            s("description", "这个血糖结果不是我的，我那天没有去医院"),
        ])
    };
    let r = app
        .send_as(
            &stranger,
            "POST",
            "$work-order",
            Some(report(format!("Observation/{obs}"))),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let bad = app
        .send_as(
            &me,
            "POST",
            "$work-order",
            Some(params(vec![s("focus", "Observation/x")])),
            &[],
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);

    // I report it: a Task routed to the hospital that sent the result.
    let r = app
        .send_as(
            &me,
            "POST",
            "$work-order",
            Some(report(format!("Observation/{obs}"))),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let t = r.body.clone();
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(t["status"], "requested");
    assert_eq!(business(&t), "open");
    assert_eq!(
        t["priority"], "urgent",
        "a result filed to the wrong person is urgent"
    );
    assert_eq!(t["focus"]["reference"], format!("Observation/{obs}"));
    assert_eq!(t["for"]["reference"], format!("Patient/{pa}"));
    assert_eq!(t["owner"]["identifier"]["value"], "91330106WA");
    assert_eq!(t["owner"]["display"], "西湖医院");
    assert_eq!(t["reasonCode"]["coding"][0]["code"], "not-mine");
    assert!(t["restriction"]["period"]["end"].is_string());
    assert_eq!(t["meta"]["source"], A);

    // The hospital sees it in its queue and as a Task; it cannot edit the Task directly.
    let items = queue(app, &a, "").await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["state"], "open");
    assert_eq!(items[0]["focus"], format!("Observation/{obs}"));
    assert!(queue(app, &app.system(B), "").await.is_empty());
    let read = app
        .send_as(&a, "GET", &format!("Task/{id}"), None, &[])
        .await;
    assert_eq!(read.status, 200, "{}", read.body);
    let mut edited = read.body.clone();
    edited["status"] = json!("completed");
    let put = app
        .send_as(&a, "PUT", &format!("Task/{id}"), Some(edited), &[])
        .await;
    assert_eq!(put.status, 403, "{}", put.body);

    // Only the hospital works on it; steps out of order are conflicts.
    assert_eq!(op(app, &me, &id, "accept", vec![]).await.0, 403);
    assert_eq!(op(app, &app.system(B), &id, "accept", vec![]).await.0, 403);
    assert_eq!(
        op(app, &doctor_a, &id, "resolve", vec![s("note", "x")])
            .await
            .0,
        409
    );
    let (st, t) = op(app, &doctor_a, &id, "accept", vec![]).await;
    assert_eq!((st, business(&t)), (200, "accepted"), "{t}");
    assert_eq!(t["status"], "accepted");
    assert_eq!(op(app, &me, &id, "close", vec![]).await.0, 409);
    let (st, t) = op(app, &a, &id, "start", vec![]).await;
    assert_eq!((st, business(&t)), (200, "in-progress"));
    let (st, t) = op(
        app,
        &me,
        &id,
        "comment",
        vec![s("note", "我的检验单号是 123")],
    )
    .await;
    assert_eq!((st, business(&t)), (200, "in-progress"));
    assert!(t["note"].to_string().contains("123"));

    // The hospital corrects the record and resolves, pointing at the corrected version.
    let mut fixed = app
        .send_as(&a, "GET", &format!("Observation/{obs}"), None, &[])
        .await
        .body;
    fixed["subject"]["reference"] = json!(format!("Patient/{other}"));
    let put = app
        .send_as(&a, "PUT", &format!("Observation/{obs}"), Some(fixed), &[])
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(
        op(app, &a, &id, "resolve", vec![]).await.0,
        400,
        "a resolution says what was done"
    );
    let (st, t) = op(
        app,
        &a,
        &id,
        "resolve",
        vec![
            s("note", "已改挂到正确患者"),
            s("corrected", &format!("Observation/{obs}")),
        ],
    )
    .await;
    assert_eq!((st, business(&t)), (200, "resolved"), "{t}");
    assert_eq!(t["status"], "completed");
    let outputs = t["output"].to_string();
    assert!(
        outputs.contains(&format!("Observation/{obs}/_history/2")),
        "{outputs}"
    );

    // I do not accept the answer: reopen (with a reason), the hospital rejects, I close.
    assert_eq!(op(app, &me, &id, "reopen", vec![]).await.0, 400);
    let (st, t) = op(
        app,
        &me,
        &id,
        "reopen",
        vec![s("reason", "还有一条尿常规也不是我的")],
    )
    .await;
    assert_eq!((st, business(&t)), (200, "open"), "{t}");
    let (st, t) = op(app, &a, &id, "reject", vec![s("reason", "尿常规确为本人")]).await;
    assert_eq!((st, business(&t)), (200, "rejected"));
    assert_eq!(t["statusReason"]["text"], "尿常规确为本人");
    let (st, t) = op(app, &me, &id, "close", vec![]).await;
    assert_eq!((st, business(&t)), (200, "closed"));
    assert_eq!(t["status"], "rejected");
    assert_eq!(
        op(app, &a, &id, "comment", vec![s("note", "late")]).await.0,
        409
    );

    // My reports, every state.
    let mine = queue(app, &me, "state=all").await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["state"], "closed");
    assert!(queue(app, &me, "").await.is_empty(), "nothing pending");
    let bad = app
        .send_as(&me, "GET", "$work-orders?state=done", None, &[])
        .await;
    assert_eq!(bad.status, 400);
    // The history of the Task is the order's log.
    let h = app
        .send_as(&a, "GET", &format!("Task/{id}/_history"), None, &[])
        .await;
    assert_eq!(h.body["total"], 8, "{}", h.body);
}

async fn overdue_orders_escalate_and_the_platform_opens_its_own(app: &TestApp) {
    organisations(app).await;
    let a = app.system(A);
    let officer = app.operator(&[Role::QualityOfficer]);
    let pa = create(app, &a, patient("w3", "钱芳", "1980-05-05")).await;
    let obs = create(app, &a, glucose(&pa, 5.0, "2026-03-01T08:00:00+08:00")).await;
    // A clinician of another institution cannot report what they cannot see…
    let doctor_b = app.clinician(B);
    let body = params(vec![
        s("focus", &format!("Observation/{obs}")),
        json!({"name": "category", "valueCode": "incorrect"}),
        s("description", "单位疑似错误"),
    ]);
    let r = app
        .send_as(&doctor_b, "POST", "$work-order", Some(body.clone()), &[])
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // …an officer can, reading it with a recorded reason; a routine order here is due at
    // once.
    let r = app
        .send_as(&officer, "POST", "$work-order", Some(body.clone()), &[])
        .await;
    assert_eq!(
        r.status, 403,
        "operators read clinical content only with a reason"
    );
    let r = app
        .send_as(
            &officer,
            "POST",
            "$work-order",
            Some(body),
            &[("X-Hutong-Reason", "质控抽查")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(queue(app, &a, "overdue=true").await.len(), 1);
    // The filters take both values: the rest of the queue is not overdue.
    let all = queue(app, &a, "").await.len();
    assert_eq!(queue(app, &a, "overdue=false").await.len(), all - 1);
    assert_eq!(queue(app, &a, "escalated=false").await.len(), all);
    let r = app
        .send_as(&a, "GET", "$work-orders?overdue=soon", None, &[])
        .await;
    assert_eq!(r.status, 400, "{}", r.body);

    // Three Observations without a clinical time (a data-set finding each), and one filed
    // under an encounter of another patient.
    let other = create(app, &a, patient("w4", "孙丽", "1985-06-06")).await;
    let enc = create(
        app,
        &a,
        json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{other}")},
            "period": {"start": "2026-03-01T08:00:00+08:00", "end": "2026-03-01T09:00:00+08:00"}}),
    )
    .await;
    for v in [5.1, 5.2, 5.3] {
        let mut o = glucose(&pa, v, "");
        o.as_object_mut().unwrap().remove("effectiveDateTime");
        create(app, &a, o).await;
    }
    let mut misfiled = glucose(&pa, 6.0, "2026-03-01T08:30:00+08:00");
    misfiled["encounter"] = json!({"reference": format!("Encounter/{enc}")});
    let misfiled = create(app, &a, misfiled).await;
    let wrong = queue(app, &a, "category=wrong-patient").await;
    assert_eq!(wrong.len(), 1, "opened with the write: {wrong:?}");
    assert_eq!(wrong[0]["focus"], format!("Observation/{misfiled}"));
    assert_eq!(wrong[0]["priority"], "urgent");

    // The sweep: only officers run it by hand.
    let r = app
        .send_as(&a, "POST", "$work-orders/$sweep", Some(params(vec![])), &[])
        .await;
    assert_eq!(r.status, 403);
    let r = app
        .send_as(
            &officer,
            "POST",
            "$work-orders/$sweep",
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["escalated"].as_u64().unwrap() >= 1, "{}", r.body);
    assert!(r.body["opened"].as_u64().unwrap() >= 1, "{}", r.body);
    let t = app
        .send_as(&officer, "GET", &format!("Task/{id}"), None, &[])
        .await
        .body;
    assert!(t["meta"]["tag"].to_string().contains("escalated"), "{t}");
    assert!(t["note"].to_string().contains("升级"));
    let escalated = queue(app, &officer, "escalated=true").await;
    assert!(escalated.iter().any(|i| i["id"] == id.as_str()));
    let failures = queue(app, &a, "category=rule-failures").await;
    let data_set: Vec<&Value> = failures
        .iter()
        .filter(|i| i["rule"] == "data-set")
        .collect();
    assert_eq!(data_set.len(), 1, "{failures:?}");
    assert!(data_set[0]["focus"]
        .as_str()
        .unwrap()
        .starts_with("Observation/"));
    // Already pending: a second sweep opens no second order for the same rule.
    let r = app
        .send_as(
            &officer,
            "POST",
            "$work-orders/$sweep",
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(r.body["opened"], 0, "{}", r.body);
    // Reopening resets the clock: accept → reject → (officer) reopen → not escalated.
    assert_eq!(
        op(app, &a, &id, "reject", vec![s("reason", "单位正确")])
            .await
            .0,
        200
    );
    let (st, t) = op(app, &officer, &id, "reopen", vec![s("reason", "请复核")]).await;
    assert_eq!(st, 200, "{t}");
    assert!(!t["meta"]["tag"].to_string().contains("escalated"), "{t}");
}

async fn reconciliation_names_the_differences(app: &TestApp) {
    organisations(app).await;
    let a = app.system(A);
    let pa = create(app, &a, patient("w5", "周敏", "1970-07-07")).await;
    // What the hospital holds…
    let mut theirs = Vec::new();
    for (id, v, day) in [
        ("rc-1", 5.0, "01"),
        ("rc-2", 6.0, "02"),
        ("rc-4", 7.0, "03"),
    ] {
        let mut o = glucose(&pa, v, &format!("2026-03-{day}T08:00:00+08:00"));
        o["id"] = json!(id);
        theirs.push(o);
    }
    // …and what reached the platform: rc-2 with another value, rc-4 never, rc-3 only here.
    for (id, v, day) in [
        ("rc-1", 5.0, "01"),
        ("rc-2", 6.6, "02"),
        ("rc-3", 8.0, "02"),
    ] {
        let mut o = glucose(&pa, v, &format!("2026-03-{day}T08:00:00+08:00"));
        o["id"] = json!(id);
        let r = app
            .send_as(&a, "PUT", &format!("Observation/{id}"), Some(o), &[])
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let items: Vec<Item> = theirs.iter().filter_map(Item::of).collect();
    let manifest = Manifest::build("2026-03-01", "2026-03-31", false, &items, false);
    let r = app
        .send_as(
            &a,
            "POST",
            "$reconcile",
            Some(serde_json::to_value(&manifest).unwrap()),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = &r.body["differences"];
    assert_eq!(d["matched"], 1, "{}", r.body);
    assert_eq!(d["missing"][0]["id"], "rc-4");
    assert_eq!(d["differs"][0]["id"], "rc-2");
    assert_eq!(d["extra"][0]["id"], "rc-3");
    assert_eq!(r.body["gaps"], 3);
    let order = r.body["workOrder"].as_str().unwrap().to_string();
    let orders = queue(app, &a, "category=reconciliation-gap").await;
    assert_eq!(orders.len(), 1);
    assert_eq!(format!("Task/{}", orders[0]["id"].as_str().unwrap()), order);
    let run = r.body["id"].as_str().unwrap().to_string();

    // The compact form: the day that differs comes back with the platform's list.
    let compact = Manifest::build("2026-03-01", "2026-03-31", false, &items, true);
    let r = app
        .send_as(
            &a,
            "POST",
            "$reconcile",
            Some(serde_json::to_value(&compact).unwrap()),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let days = r.body["differences"]["days"].as_array().unwrap();
    let days: Vec<&str> = days.iter().map(|d| d["day"].as_str().unwrap()).collect();
    assert_eq!(days, ["2026-03-02", "2026-03-03"]);
    assert!(
        r.body.get("workOrder").is_none(),
        "one pending order is enough"
    );

    // Runs are kept; another institution sees none of them.
    let list = app.send_as(&a, "GET", "$reconcile", None, &[]).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 2);
    let one = app
        .send_as(&a, "GET", &format!("$reconcile/{run}"), None, &[])
        .await;
    assert_eq!(one.body["differences"]["missing"][0]["id"], "rc-4");
    let b = app.system(B);
    assert_eq!(
        app.send_as(&b, "GET", &format!("$reconcile/{run}"), None, &[])
            .await
            .status,
        404
    );
    let spy = app
        .send_as(&b, "GET", &format!("$reconcile?source={A}"), None, &[])
        .await;
    assert_eq!(spy.status, 403);
    // A bad manifest is a clear 400.
    for bad in [
        json!({"from": "2026-03-31", "to": "2026-03-01"}),
        json!({"from": "2026-03-01", "to": "2026-03-31", "resources": [{"type": "Obs", "id": "x", "hash": "y"}]}),
        json!({"from": "2026-03-01", "to": "2026-03-31", "colour": "red"}),
    ] {
        let r = app.send_as(&a, "POST", "$reconcile", Some(bad), &[]).await;
        assert_eq!(r.status, 400, "{}", r.body);
    }
}

async fn scorecards_add_up(app: &TestApp) {
    organisations(app).await;
    let a = app.system(A);
    let now = hutong_fhir::date::now_ms();
    let ago = |h: i64| hutong_fhir::date::format_instant(now - h * 3_600_000);
    let pa = create(app, &a, patient("w6", "吴静", "1966-06-16")).await;
    create(app, &a, glucose(&pa, 5.0, &ago(2))).await;
    create(app, &a, glucose(&pa, 5.5, &ago(3))).await;
    create(app, &a, glucose(&pa, 5.7, &ago(48))).await;
    let mut undated = glucose(&pa, 5.9, "");
    undated.as_object_mut().unwrap().remove("effectiveDateTime");
    create(app, &a, undated).await;
    // A value off the chart: rejected and quarantined.
    let r = app
        .send_as(
            &a,
            "POST",
            "Observation",
            Some(glucose(&pa, 94.0, &ago(1))),
            &[],
        )
        .await;
    assert_eq!(r.status, 422);

    let r = app.send_as(&a, "GET", "$scorecard", None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let inst = &r.body["institutions"][0];
    assert_eq!(inst["source"], A);
    assert_eq!(inst["name"], "西湖医院");
    assert_eq!(inst["district"], "西湖区");
    let c = &inst["card"];
    // 1 Patient + 4 Observations accepted, 1 rejected.
    assert_eq!(
        (c["received"].as_u64(), c["rejected"].as_u64()),
        (Some(5), Some(1)),
        "{c}"
    );
    assert_eq!(c["timeliness"]["measured"], 3);
    assert_eq!(c["timeliness"]["median_hours"], 3.0);
    assert_eq!(c["timeliness"]["p90_hours"], 48.0);
    assert!((c["timeliness"]["late_share"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(
        c["completeness"]["required"], 0.8,
        "the undated one lacks effective[x]"
    );
    // 6 submissions: 4 clean, 1 with a finding, 1 rejected.
    assert!(
        (c["validity"]["pass_rate"].as_f64().unwrap() - 4.0 / 6.0).abs() < 1e-9,
        "{c}"
    );
    let by_rule = &c["validity"]["by_rule"];
    assert!((by_rule["value-plausible"].as_f64().unwrap() - 5.0 / 6.0).abs() < 1e-9);
    assert!(c["score"].as_f64().unwrap() > 0.0);
    assert!(!inst["types"].as_array().unwrap().is_empty());
    assert!(!inst["trend"].as_array().unwrap().is_empty());

    // Another institution cannot read A's card; the quality officer sees the region.
    let b = app.system(B);
    let r = app
        .send_as(&b, "GET", &format!("$scorecard?source={A}"), None, &[])
        .await;
    assert_eq!(r.status, 403);
    let officer = app.operator(&[Role::QualityOfficer]);
    let r = app.send_as(&officer, "GET", "$scorecard", None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["region"]["received"].as_u64().unwrap() >= 5);
    let districts = r.body["districts"].as_array().unwrap();
    assert!(
        districts.iter().any(|d| d["district"] == "西湖区"),
        "{districts:?}"
    );

    // The report exports: CSV with a row per level, and a printable page.
    let csv = app
        .send_as(&officer, "GET", "$scorecard?format=csv", None, &[])
        .await;
    assert_eq!(csv.status, 200);
    assert!(csv.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = csv.body.as_str().unwrap();
    assert!(text.starts_with("level,source,name,district"));
    assert!(text.lines().any(|l| l.starts_with("region,")));
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("institution,{A},西湖医院,西湖区,,,5,1,"))),
        "{text}"
    );
    let html = app
        .send_as(&officer, "GET", "$scorecard?format=html", None, &[])
        .await;
    assert!(html.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = html.body.as_str().unwrap();
    assert!(page.contains("数据质量报告") && page.contains("西湖医院"));
    let bad = app
        .send_as(&officer, "GET", "$scorecard?from=yesterday", None, &[])
        .await;
    assert_eq!(bad.status, 400);

    // The same submissions, hour by hour: accepted, rejected, and how late they came.
    let r = app
        .send_as(&officer, "GET", "$intake?hours=6", None, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["hours"].as_array().unwrap().len(), 6);
    let row = r.body["institutions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["source"] == A)
        .unwrap_or_else(|| panic!("{A} in {}", r.body));
    assert_eq!(row["name"], "西湖医院");
    let f = &row["figures"];
    assert_eq!(
        (&f["received"], &f["rejected"]),
        (&json!(5), &json!(1)),
        "{f}"
    );
    let per_hour: u64 = f["receivedPerHour"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(per_hour, 5);
    assert_eq!(f["delay"]["measured"], 5, "each carries a collection time");
    assert!(r.body["region"]["received"].as_u64().unwrap() >= 5);
    let r = app.send_as(&a, "GET", "$intake", None, &[]).await;
    assert_eq!(r.status, 403, "the region's intake is for operators");
    let r = app
        .send_as(&officer, "GET", "$intake?hours=0", None, &[])
        .await;
    assert_eq!(r.status, 400);

    // A report is kept only until something it counts changes.
    let card = |r: &crate::helpers::Res| r.body["region"]["received"].as_u64().unwrap();
    let before = card(&app.send_as(&officer, "GET", "$scorecard", None, &[]).await);
    create(app, &a, glucose(&pa, 5.2, &ago(1))).await;
    let after = card(&app.send_as(&officer, "GET", "$scorecard", None, &[]).await);
    assert_eq!(after, before + 1);
}

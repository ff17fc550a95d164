//! The service-coordination pages (业务协同): for residents, booking from the regional slot
//! pool, their appointments and referrals, and their family doctor; for clinicians, referring
//! a patient, the referral boxes, the recognition check at order time and the follow-up
//! list; for operators, the pool's use and the referral flows. Every page asks the engine's
//! operations as the signed-in person, as the FHIR API would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use hutong_access::principal::Kind;
use hutong_server::http::AppState;
use maud::{html, Markup};
use serde_json::{json, Value};

use crate::resident::Visit;
use crate::view::local;
use crate::{json_of, notice, page, problem, respond, Desk, Lang};

const DAY: i64 = 86_400_000;

fn ms(v: &Value) -> Option<i64> {
    v.as_str().and_then(hutong_fhir::date::parse).map(|r| r.lo)
}

fn params(p: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": p})
}

fn ext<'a>(v: &'a Value, url: &str) -> Option<&'a Value> {
    v["extension"].as_array()?.iter().find(|e| e["url"] == url)
}

/// Today's date in Beijing time, `YYYY-MM-DD`.
fn today() -> String {
    local(hutong_fhir::date::now_ms())
        .get(..10)
        .unwrap_or("")
        .to_string()
}

fn direction_label(lang: Lang, d: &str) -> &'static str {
    match d {
        "down" => lang.t("下转（回社区）", "Down (to primary care)"),
        _ => lang.t("上转（到医院）", "Up (to a hospital)"),
    }
}

fn state_label(lang: Lang, s: &str) -> &'static str {
    match s {
        "awaiting-consent" => lang.t("待居民同意", "Awaiting consent"),
        "requested" => lang.t("待接收", "Waiting to be accepted"),
        "accepted" => lang.t("已接收", "Accepted"),
        "scheduled" => lang.t("已预约", "Scheduled"),
        "completed" => lang.t("已完成", "Completed"),
        "rejected" => lang.t("已拒绝", "Rejected"),
        "cancelled" => lang.t("已取消", "Cancelled"),
        "booked" => lang.t("已预约", "Booked"),
        "pending" => lang.t("锁定中", "Held"),
        "noshow" => lang.t("爽约", "No-show"),
        "fulfilled" => lang.t("已就诊", "Attended"),
        "arrived" | "checked-in" => lang.t("已到诊", "Arrived"),
        "active" => lang.t("生效中", "Active"),
        "finished" => lang.t("已解约", "Ended"),
        "overdue" => lang.t("逾期未随访", "Overdue"),
        "due" => lang.t("本周待随访", "Due this week"),
        "done" => lang.t("已按时随访", "Up to date"),
        _ => lang.t("其他", "Other"),
    }
}

/// The free slots a `$find` offers, each with a booking button posting to `action`.
fn slot_list(
    lang: Lang,
    csrf: &str,
    found: &Value,
    action: &str,
    hidden: &[(&str, &str)],
) -> Markup {
    let entries: Vec<&Value> = found["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .collect();
    html! {
        @if entries.is_empty() {
            p.empty { (lang.t("所选时间内没有可预约的号源，换个日期或科室试试。", "No free slots in that time: try other dates or another department.")) }
        }
        ul.slots {
            @for a in &entries {
                @let slot = a["slot"][0]["reference"].as_str().unwrap_or("").trim_start_matches("Slot/").to_string();
                @let inst = ext(a, "https://hutong.dev/fhir/StructureDefinition/institution").and_then(|e| e["valueReference"]["display"].as_str()).unwrap_or("");
                @let doctor = a["participant"][0]["actor"]["display"].as_str().unwrap_or("");
                @let reserved = ext(a, "https://hutong.dev/fhir/StructureDefinition/family-doctor-share").is_some();
                li.item data-slot=(slot) {
                    strong { (ms(&a["start"]).map(local).unwrap_or_default()) }
                    " " (a["specialty"][0]["text"].as_str().unwrap_or("")) " · " (inst)
                    @if !doctor.is_empty() { " · " (doctor) (lang.t("医生", "")) }
                    @if reserved { " " span.tag data-reserved="true" { (lang.t("家庭医生预留号", "Family doctors' share")) } }
                    form.inline method="post" action=(action) {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="slot" value=(slot);
                        @for (k, v) in hidden { input type="hidden" name=(k) value=(v); }
                        button type="submit" { (lang.t("预约", "Book")) }
                    }
                }
            }
        }
    }
}

// -- residents --------------------------------------------------------------------------

/// The resident's (or the family member's) Patients, and the record's coordination items:
/// appointments, referrals and contracts, as the engine gives them to this reader.
async fn mine(st: &Arc<AppState>, v: &Visit) -> (Vec<String>, Vec<Value>) {
    let r = crate::call(
        st,
        v.s.principal.clone(),
        "portal",
        "GET",
        &format!("Person/{}/$everything", v.person),
        &[
            ("_type", "Patient,Appointment,Task,EpisodeOfCare"),
            ("_count", "500"),
        ],
        None,
    )
    .await;
    let items: Vec<Value> = json_of(&r)["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .collect();
    let patients = items
        .iter()
        .filter(|x| x["resourceType"] == "Patient")
        .filter_map(|x| x["id"].as_str().map(String::from))
        .collect();
    (patients, items)
}

/// `GET /portal/appointments`: book from the regional pool; my appointments and referrals.
pub async fn appointments(State(st): State<Arc<AppState>>, v: Visit) -> Response {
    let lang = v.lang;
    let q = |k: &str| {
        v.query
            .iter()
            .find(|(x, _)| x == k)
            .map(|(_, y)| y.trim().to_string())
            .filter(|y| !y.is_empty())
    };
    let date = q("date").unwrap_or_else(today);
    let specialty = q("specialty").unwrap_or_default();
    let district = q("district").unwrap_or_default();
    let start = hutong_fhir::date::parse(&date)
        .map(|r| r.lo - 8 * 3_600_000)
        .unwrap_or_else(hutong_fhir::date::now_ms);
    let start = start.max(hutong_fhir::date::now_ms());
    let s0 = hutong_fhir::date::format_instant(start);
    let s1 = hutong_fhir::date::format_instant(start + 7 * DAY);
    let mut query: Vec<(&str, &str)> = vec![("start", &s0), ("end", &s1), ("_count", "20")];
    if !specialty.is_empty() {
        query.push(("specialty", &specialty));
    }
    if !district.is_empty() {
        query.push(("district", &district));
    }
    let found = crate::call(
        &st,
        v.s.principal.clone(),
        "portal",
        "GET",
        "Appointment/$find",
        &query,
        None,
    )
    .await;
    let (_, items) = mine(&st, &v).await;
    let mut appts: Vec<&Value> = items
        .iter()
        .filter(|x| x["resourceType"] == "Appointment")
        .collect();
    appts.sort_by_key(|a| std::cmp::Reverse(ms(&a["start"])));
    let referrals: Vec<&Value> = items
        .iter()
        .filter(|x| x["resourceType"] == "Task" && x["code"]["coding"][0]["code"] == "referral")
        .collect();
    let note = q("done").map(|d| match d.as_str() {
        "booked" => notice(
            lang.t(
                "预约成功。请按时就诊；如需取消，请在下方“我的预约”中取消。",
                "Booked. If you cannot come, cancel it below under My appointments.",
            ),
            false,
        ),
        "cancelled" => notice(
            lang.t(
                "预约已取消，号源已退回号源池。",
                "Cancelled: the slot is back in the pool.",
            ),
            false,
        ),
        _ => html! {},
    });
    let error = q("error").map(|e| notice(&e, true));
    let body = html! {
        (crate::resident::acting_banner_pub(&v))
        @if let Some(n) = note { (n) }
        @if let Some(e) = error { (e) }
        section {
            h2 { (lang.t("预约挂号（全市号源池）", "Book an appointment (the region's slot pool)")) }
            form.search method="get" action="/portal/appointments" {
                label for="specialty" { (lang.t("科室", "Department")) }
                input id="specialty" name="specialty" value=(specialty) list="specialties" placeholder=(lang.t("如：内科、儿科、全科医学科", "e.g. 内科, 儿科, 全科医学科"));
                datalist id="specialties" {
                    @for s in ["内科", "外科", "儿科", "妇产科", "全科医学科", "预防保健科", "体检科"] { option value=(s) {} }
                }
                label for="district" { (lang.t("区县", "District")) }
                input id="district" name="district" value=(district) placeholder=(lang.t("如：西湖区", "e.g. 西湖区"));
                label for="date" { (lang.t("从哪天起（7天内）", "From (7 days)")) }
                input id="date" name="date" type="date" value=(date);
                button type="submit" { (lang.t("查找号源", "Find slots")) }
            }
            @if found.status == 200 {
                p.meta { (lang.t("可预约号源共 ", "Free slots: ")) (json_of(&found)["total"].as_u64().unwrap_or(0)) (lang.t(" 个，最早的在前。", ", earliest first.")) }
                (slot_list(lang, &v.s.csrf(), &json_of(&found), "/portal/appointments/book", &[]))
            } @else {
                (notice(&problem(&found), true))
            }
        }
        section {
            h2 { (lang.t("我的预约", "My appointments")) }
            @if appts.is_empty() { p.empty { (lang.t("还没有预约记录。", "No appointments yet.")) } }
            ul {
                @for a in &appts {
                    @let status = a["status"].as_str().unwrap_or("");
                    li.item data-appointment=(a["id"].as_str().unwrap_or("")) data-status=(status) {
                        strong { (ms(&a["start"]).map(local).unwrap_or_default()) }
                        " " span.tag { (state_label(lang, status)) }
                        @if let Some(d) = a["participant"].as_array().into_iter().flatten().find_map(|p| p["actor"]["display"].as_str()) { " · " (d) }
                        @if matches!(status, "booked" | "pending") && ms(&a["start"]).is_some_and(|t| t > hutong_fhir::date::now_ms()) {
                            form.inline method="post" action="/portal/appointments/cancel" {
                                input type="hidden" name="csrf" value=(v.s.csrf());
                                input type="hidden" name="id" value=(a["id"].as_str().unwrap_or(""));
                                button.secondary type="submit" { (lang.t("取消预约", "Cancel")) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { (lang.t("我的转诊", "My referrals")) }
            @if referrals.is_empty() { p.empty { (lang.t("没有转诊记录。", "No referrals.")) } }
            ul {
                @for t in &referrals {
                    @let state = t["businessStatus"]["coding"][0]["code"].as_str().unwrap_or("");
                    @let dir = ext(t, "https://hutong.dev/fhir/StructureDefinition/referral-direction").and_then(|e| e["valueCode"].as_str()).unwrap_or("up");
                    li.item data-referral=(t["id"].as_str().unwrap_or("")) {
                        strong { (ms(&t["authoredOn"]).map(local).unwrap_or_default()) }
                        " " (direction_label(lang, dir)) " → " (t["owner"]["display"].as_str().unwrap_or(""))
                        " " span.tag { (state_label(lang, state)) }
                        div.meta { (t["input"][0]["valueString"].as_str().unwrap_or("")) }
                    }
                }
            }
        }
    };
    respond(
        StatusCode::OK,
        &v.query,
        page(
            lang,
            lang.t("预约与转诊", "Appointments and referrals"),
            Some(&v.s),
            body,
        ),
    )
}

fn back(to: &str, key: &str, val: &str) -> Response {
    Redirect::to(&format!(
        "{to}?{key}={}",
        hutong_server::wire::percent_encode(val)
    ))
    .into_response()
}

/// `$book` with `a` as the resident, and back to their appointments saying `done`.
async fn book_as(st: &Arc<AppState>, v: &Visit, a: Value, done: &str) -> Response {
    let body = params(vec![json!({"name": "appointment-resource", "resource": a})]);
    let r = crate::call(
        st,
        v.s.principal.clone(),
        "portal",
        "POST",
        "Appointment/$book",
        &[],
        Some(&body),
    )
    .await;
    if r.status == 200 {
        back("/portal/appointments", "done", done)
    } else {
        back("/portal/appointments", "error", &problem(&r))
    }
}

/// `POST /portal/appointments/book`: books a slot for the resident (or the family member).
pub async fn book(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (v, f) = match Visit::posted(&st, req).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let (patients, _) = mine(&st, &v).await;
    let Some(patient) = patients.first() else {
        return back(
            "/portal/appointments",
            "error",
            v.lang.t(
                "您的档案中还没有就诊记录，无法预约。",
                "Your record has no registration to book with.",
            ),
        );
    };
    let slot = f.get("slot").cloned().unwrap_or_default();
    let a = json!({"resourceType": "Appointment", "status": "proposed",
        "slot": [{"reference": format!("Slot/{slot}")}],
        "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "needs-action"}]});
    book_as(&st, &v, a, "booked").await
}

/// `POST /portal/appointments/cancel`.
pub async fn cancel(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (v, f) = match Visit::posted(&st, req).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let id = f.get("id").cloned().unwrap_or_default();
    let cur = crate::call(
        &st,
        v.s.principal.clone(),
        "portal",
        "GET",
        &format!("Appointment/{id}"),
        &[],
        None,
    )
    .await;
    if cur.status != 200 {
        return back("/portal/appointments", "error", &problem(&cur));
    }
    let mut a = json_of(&cur);
    a["status"] = json!("cancelled");
    book_as(&st, &v, a, "cancelled").await
}

const PACKAGES: [(&str, &str, &str); 5] = [
    ("basic", "基础服务包", "Basic package"),
    ("hypertension", "高血压个性化服务包", "Hypertension package"),
    ("diabetes", "糖尿病个性化服务包", "Diabetes package"),
    ("elderly", "老年人服务包", "Older people's package"),
    (
        "maternal-child",
        "孕产妇及儿童服务包",
        "Mothers' and children's package",
    ),
];

/// `GET /portal/family-doctor`: my contracts; sign, renew or end one.
pub async fn family_doctor(State(st): State<Arc<AppState>>, v: Visit) -> Response {
    let lang = v.lang;
    let (_, items) = mine(&st, &v).await;
    let contracts: Vec<&Value> = items
        .iter()
        .filter(|x| x["resourceType"] == "EpisodeOfCare")
        .collect();
    let centres = crate::call(&st, v.s.principal.clone(), "portal", "GET", "Organization",
        &[("type", "https://hutong.dev/fhir/CodeSystem/institution-kind|community-health-centre,https://hutong.dev/fhir/CodeSystem/institution-kind|township-clinic"), ("_count", "200")], None).await;
    let centres: Vec<Value> = json_of(&centres)["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .collect();
    let q = |k: &str| v.query.iter().find(|(x, _)| x == k).map(|(_, y)| y.clone());
    let body = html! {
        (crate::resident::acting_banner_pub(&v))
        @if let Some(e) = q("error") { (notice(&e, true)) }
        @if q("done").is_some() { (notice(lang.t("已办理。签约期间，签约机构可调阅您的健康档案；您可随时在“授权与访问记录”中撤销。", "Done. While the contract lasts your centre may read your record; you can revoke that under Authorizations at any time."), false)) }
        section {
            h2 { (lang.t("我的家庭医生签约", "My family-doctor contracts")) }
            @if contracts.is_empty() { p.empty { (lang.t("您还没有签约家庭医生。签约后，家庭医生团队为您提供健康管理和慢病随访，并可为您转诊、预约上级医院号源。", "You have no family doctor yet. With a contract, a family doctor team looks after your health and chronic-disease follow-ups, and can refer you and book hospital appointments for you.")) } }
            ul {
                @for c in &contracts {
                    @let status = c["status"].as_str().unwrap_or("");
                    li.item data-contract=(c["id"].as_str().unwrap_or("")) data-status=(status) {
                        strong { (c["managingOrganization"]["display"].as_str().unwrap_or("")) }
                        " · " (c["type"][0]["coding"][0]["display"].as_str().unwrap_or(""))
                        " " span.tag { (state_label(lang, status)) }
                        div.meta { (lang.t("有效期：", "Period: ")) (ms(&c["period"]["start"]).map(local).unwrap_or_default().get(..10).unwrap_or("")) " – " (ms(&c["period"]["end"]).map(local).unwrap_or_default().get(..10).unwrap_or("")) }
                        @if status == "active" {
                            form.inline method="post" action=(format!("/portal/family-doctor/{}/renew", c["id"].as_str().unwrap_or(""))) {
                                input type="hidden" name="csrf" value=(v.s.csrf());
                                button type="submit" { (lang.t("续约一年", "Renew for a year")) }
                            }
                            form.inline method="post" action=(format!("/portal/family-doctor/{}/end", c["id"].as_str().unwrap_or(""))) {
                                input type="hidden" name="csrf" value=(v.s.csrf());
                                input type="hidden" name="reason" value="居民在线解约";
                                button.secondary type="submit" { (lang.t("解约", "End")) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { (lang.t("在线签约", "Sign online")) }
            form method="post" action="/portal/family-doctor/sign" {
                input type="hidden" name="csrf" value=(v.s.csrf());
                label for="organization" { (lang.t("社区卫生服务中心 / 乡镇卫生院", "Community health centre or township clinic")) }
                select id="organization" name="organization" required {
                    @for c in &centres { option value=(c["id"].as_str().unwrap_or("")) { (c["name"].as_str().unwrap_or("")) } }
                }
                label for="package" { (lang.t("服务包", "Service package")) }
                select id="package" name="package" {
                    @for (code, zh, en) in PACKAGES { option value=(code) { (lang.t(zh, en)) } }
                }
                button type="submit" { (lang.t("签约", "Sign")) }
            }
        }
    };
    respond(
        StatusCode::OK,
        &v.query,
        page(lang, lang.t("家庭医生", "Family doctor"), Some(&v.s), body),
    )
}

/// `POST /portal/family-doctor/sign`, `/{id}/renew`, `/{id}/end`.
pub async fn contract_action(
    State(st): State<Arc<AppState>>,
    action: Option<Path<(String, String)>>,
    req: Request,
) -> Response {
    let (v, f) = match Visit::posted(&st, req).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let r = match action {
        None => {
            let body = params(vec![
                json!({"name": "organization", "valueReference": {"reference": format!("Organization/{}", f.get("organization").cloned().unwrap_or_default())}}),
                json!({"name": "package", "valueCode": f.get("package").cloned().unwrap_or_else(|| "basic".into())}),
            ]);
            crate::call(
                &st,
                v.s.principal.clone(),
                "portal",
                "POST",
                &format!("Person/{}/$sign-contract", v.person),
                &[],
                Some(&body),
            )
            .await
        }
        Some(Path((id, what))) => {
            let op = if what == "renew" { "$renew" } else { "$end" };
            let body = params(vec![
                json!({"name": "reason", "valueString": f.get("reason").cloned().unwrap_or_else(|| "居民在线解约".into())}),
            ]);
            crate::call(
                &st,
                v.s.principal.clone(),
                "portal",
                "POST",
                &format!("EpisodeOfCare/{id}/{op}"),
                &[],
                Some(&body),
            )
            .await
        }
    };
    if r.status < 300 {
        back("/portal/family-doctor", "done", "1")
    } else {
        back("/portal/family-doctor", "error", &problem(&r))
    }
}

pub async fn sign(st: State<Arc<AppState>>, req: Request) -> Response {
    contract_action(st, None, req).await
}

pub async fn contract(
    st: State<Arc<AppState>>,
    p: Path<(String, String)>,
    req: Request,
) -> Response {
    contract_action(st, Some(p), req).await
}

// -- clinicians ------------------------------------------------------------------------

fn desk(st: &AppState, req: &Request, addr: SocketAddr) -> Result<Desk, Box<Response>> {
    Desk::or_sign_in(st, req, addr, Kind::Clinician)
}

/// The recognition list's items a clinician orders from: the list in force, by name.
fn orderable(st: &AppState) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = st
        .engine
        .config
        .pool
        .recognition
        .items()
        .into_iter()
        .map(|i| (i.code.clone(), i.name_zh.clone()))
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

/// `GET /workstation/person/{id}/coordinate`: refer the patient, or check an order against
/// the results recognized across the region.
pub async fn coordinate(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let d = match desk(&st, &req, addr) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let lang = d.lang;
    let orgs = d
        .ask(&st, "GET", "Organization", &[("_count", "200")], None)
        .await;
    let mine = d.s.principal.institution.clone().unwrap_or_default();
    let orgs: Vec<Value> = json_of(&orgs)["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .filter(|o| hutong_server::consent::institution_of_org(o).is_some_and(|i| i != mine))
        .collect();
    let body = html! {
        @if let Some(e) = d.q("error") { (notice(&e, true)) }
        p { a href=(format!("/workstation/person/{id}")) { (lang.t("← 返回患者摘要", "← Back to the summary")) } }
        section {
            h2 { (lang.t("开单前互认查询", "Before ordering: results recognized across the region")) }
            form method="post" action=(format!("/workstation/person/{id}/check")) {
                input type="hidden" name="csrf" value=(d.s.csrf());
                label for="code" { (lang.t("拟开检查检验项目", "Test or examination to order")) }
                select id="code" name="code" {
                    @for (code, name) in orderable(&st) { option value=(code) { (name) " (" (code) ")" } }
                }
                button type="submit" { (lang.t("查询可互认结果", "Check")) }
            }
        }
        section {
            h2 { (lang.t("转诊", "Refer")) }
            form method="post" action=(format!("/workstation/person/{id}/refer")) {
                input type="hidden" name="csrf" value=(d.s.csrf());
                label for="performer" { (lang.t("转至机构", "To")) }
                select id="performer" name="performer" required {
                    @for o in &orgs { option value=(o["id"].as_str().unwrap_or("")) { (o["name"].as_str().unwrap_or("")) } }
                }
                label for="direction" { (lang.t("方向", "Direction")) }
                select id="direction" name="direction" {
                    option value="up" { (direction_label(lang, "up")) }
                    option value="down" { (direction_label(lang, "down")) }
                }
                label for="reason" { (lang.t("转诊原因", "Reason")) }
                input id="reason" name="reason" required minlength="4";
                label for="method" { (lang.t("征得居民同意的方式", "How the resident consents")) }
                select id="method" name="method" {
                    option value="sms" { (lang.t("短信验证码（居民在场）", "SMS code (resident present)")) }
                    option value="app" { (lang.t("居民在 App 中同意", "Approval in the app")) }
                }
                button type="submit" { (lang.t("提交转诊", "Refer")) }
            }
        }
    };
    d.page(
        StatusCode::OK,
        lang.t("转诊与开单", "Refer and order"),
        body,
    )
}

/// This clinician's institution's own Patient for the person (the one it refers or orders
/// for).
async fn own_patient(st: &Arc<AppState>, d: &Desk, person: &str) -> Option<String> {
    let r = d
        .ask(
            st,
            "GET",
            &format!("Person/{person}/$everything"),
            &[("_type", "Patient"), ("_count", "50")],
            None,
        )
        .await;
    let mine = d.s.principal.institution.clone().unwrap_or_default();
    json_of(&r)["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .find(|p| p["meta"]["source"].as_str() == Some(mine.as_str()))
        .and_then(|p| p["id"].as_str().map(String::from))
}

/// `POST /workstation/person/{id}/refer`.
pub async fn refer(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let (d, f) = match Desk::posted(&st, addr, req, Kind::Clinician, "/workstation").await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let lang = d.lang;
    let Some(patient) = own_patient(&st, &d, &id).await else {
        return back(
            &format!("/workstation/person/{id}/coordinate"),
            "error",
            lang.t(
                "本机构没有该居民的就诊记录，无法由本机构转诊。",
                "Your institution has no record of this person to refer from.",
            ),
        );
    };
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let body = params(vec![
        json!({"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}}),
        json!({"name": "performer", "valueReference": {"reference": format!("Organization/{}", get("performer"))}}),
        json!({"name": "direction", "valueCode": get("direction")}),
        json!({"name": "reason", "valueString": get("reason")}),
        json!({"name": "method", "valueCode": get("method")}),
    ]);
    let r = d
        .ask(&st, "POST", "ServiceRequest/$refer", &[], Some(&body))
        .await;
    if r.status != 201 {
        return back(
            &format!("/workstation/person/{id}/coordinate"),
            "error",
            &problem(&r),
        );
    }
    let t = json_of(&r);
    let consent = t["contained"][0]["id"].as_str().unwrap_or("").to_string();
    let sms = get("method") == "sms";
    let page_body = html! {
        (notice(lang.t("转诊已提交，等待居民同意。", "Referral sent: waiting for the resident's consent."), false))
        @if sms {
            p { (lang.t("已向居民手机发送验证码，请居民告知后输入：", "A code was sent to the resident's phone: enter it when they read it out:")) }
            form method="post" action=(format!("/workstation/consent/{consent}/code")) {
                input type="hidden" name="csrf" value=(d.s.csrf());
                input type="hidden" name="then" value="/workstation/referrals?box=out";
                label for="code" { (lang.t("验证码", "Code")) }
                input id="code" name="code" inputmode="numeric" pattern="[0-9]{6}" required;
                button type="submit" { (lang.t("确认", "Confirm")) }
            }
        } @else {
            p { (lang.t("已请居民在 App 中确认。", "The resident was asked to approve in the app.")) }
        }
        p { a href="/workstation/referrals?box=out" { (lang.t("查看我发出的转诊", "My sent referrals")) } }
    };
    d.page(StatusCode::OK, lang.t("转诊", "Referral"), page_body)
}

/// `POST /workstation/person/{id}/check`: the recognition check, and the choice it offers.
pub async fn check(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let (d, f) = match Desk::posted(&st, addr, req, Kind::Clinician, "/workstation").await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let lang = d.lang;
    let Some(patient) = own_patient(&st, &d, &id).await else {
        return back(
            &format!("/workstation/person/{id}/coordinate"),
            "error",
            lang.t(
                "本机构没有该居民的就诊记录。",
                "Your institution has no record of this person.",
            ),
        );
    };
    let code = f.get("code").cloned().unwrap_or_default();
    let body = params(vec![
        json!({"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}}),
        json!({"name": "code", "valueCoding": {"system": "http://loinc.org", "code": code}}),
    ]);
    let r = d
        .ask(
            &st,
            "POST",
            "ServiceRequest/$check-recognition",
            &[],
            Some(&body),
        )
        .await;
    if r.status != 200 {
        return back(
            &format!("/workstation/person/{id}/coordinate"),
            "error",
            &problem(&r),
        );
    }
    let v = json_of(&r);
    let check = v["parameter"][0]["valueString"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let item = v["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "item")
        .cloned()
        .unwrap_or(Value::Null);
    let parts: Vec<&Value> = item["part"].as_array().into_iter().flatten().collect();
    let outcome = parts
        .iter()
        .find(|p| p["name"] == "outcome")
        .and_then(|p| p["valueCode"].as_str())
        .unwrap_or("");
    let days = parts
        .iter()
        .find(|p| p["name"] == "recognizedDays")
        .and_then(|p| p["valueInteger"].as_u64());
    let results: Vec<&Value> = parts
        .iter()
        .filter(|p| p["name"] == "result")
        .map(|p| &p["resource"])
        .collect();
    let unreadable = parts
        .iter()
        .find(|p| p["name"] == "unreadable")
        .and_then(|p| p["valueInteger"].as_u64())
        .unwrap_or(0);
    let sources = results
        .iter()
        .filter_map(|x| x["meta"]["source"].as_str().map(String::from))
        .collect();
    let names = crate::names(&st, sources).await;
    let name = orderable(&st)
        .into_iter()
        .find(|(c, _)| *c == code)
        .map(|x| x.1)
        .unwrap_or(code.clone());
    let page_body = html! {
        h2 { (name) }
        @if let Some(n) = days { p.meta { (lang.t("互认有效期：", "Recognized for ")) (n) (lang.t(" 天", " days")) } }
        @match outcome {
            "recognizable" => {
                (notice(lang.t("该项目近期已在合格机构完成，结果可互认：可直接使用，无需重复检查。", "This was done recently at a qualified institution: the result is recognized and can be used instead of a repeat."), false))
                ul {
                    @for o in &results {
                        @let src = o["meta"]["source"].as_str().unwrap_or("");
                        li.item data-recognized="true" {
                            strong { (ms(&o["effectiveDateTime"]).or(ms(&o["issued"])).map(local).unwrap_or_default()) }
                            " " (crate::view::summary(o))
                            div.meta { (names.get(src).map(String::as_str).unwrap_or(src)) }
                        }
                    }
                }
            }
            "ask-consent" => {
                (notice(&format!("{} {} {}", lang.t("其他机构有", "Other institutions hold"), unreadable, lang.t("项可互认结果，需居民授权后才能查看。", "recognized results you may see once the resident authorizes it.")), false))
                p { a href=(format!("/workstation/person/{id}")) { (lang.t("申请调阅授权", "Ask for access")) } }
            }
            _ => { p.empty { (lang.t("没有可互认的近期结果，请正常开单。", "No recent recognized result: order as usual.")) } }
        }
        form.inline method="post" action=(format!("/workstation/check/{check}")) {
            input type="hidden" name="csrf" value=(d.s.csrf());
            input type="hidden" name="person" value=(id);
            input type="hidden" name="code" value=(code);
            @if outcome == "recognizable" {
                button type="submit" name="decision" value="used-existing" { (lang.t("使用已有结果（不重复检查）", "Use the existing result")) }
            }
            button.secondary type="submit" name="decision" value="ordered" { (lang.t("仍然开单", "Order anyway")) }
        }
    };
    d.page(
        StatusCode::OK,
        lang.t("检查检验结果互认", "Result recognition"),
        page_body,
    )
}

/// `POST /workstation/check/{check}`: what the clinician decided.
pub async fn decide(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(check): Path<String>,
    req: Request,
) -> Response {
    let (d, f) = match Desk::posted(&st, addr, req, Kind::Clinician, "/workstation").await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let lang = d.lang;
    let decision = f.get("decision").cloned().unwrap_or_default();
    let body = params(vec![
        json!({"name": "check", "valueString": check}),
        json!({"name": "decision", "valueCode": decision}),
        json!({"name": "code", "valueCoding": {"system": "http://loinc.org", "code": f.get("code").cloned().unwrap_or_default()}}),
    ]);
    let r = d
        .ask(
            &st,
            "POST",
            "ServiceRequest/$recognition-decision",
            &[],
            Some(&body),
        )
        .await;
    let person = f.get("person").cloned().unwrap_or_default();
    let msg = match (r.status, decision.as_str()) {
        (200, "used-existing") => notice(
            lang.t(
                "已记录：使用已有结果，避免了一次重复检查。",
                "Recorded: the existing result was used and a repeat avoided.",
            ),
            false,
        ),
        (200, _) => notice(
            lang.t("已记录：照常开单。", "Recorded: ordered as usual."),
            false,
        ),
        _ => notice(&problem(&r), true),
    };
    d.page(StatusCode::OK, lang.t("检查检验结果互认", "Result recognition"), html! {
        (msg)
        p { a href=(format!("/workstation/person/{person}")) { (lang.t("返回患者摘要", "Back to the summary")) } }
    })
}

/// `GET /workstation/referrals?box=in|out`.
pub async fn referrals(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let d = match desk(&st, &req, addr) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let lang = d.lang;
    let bx = d.q("box").unwrap_or_else(|| "in".into());
    let r = d
        .ask(
            &st,
            "GET",
            "$referrals",
            &[("box", bx.as_str()), ("_count", "100")],
            None,
        )
        .await;
    let tasks: Vec<Value> = json_of(&r)["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .collect();
    let body = html! {
        @if let Some(e) = d.q("error") { (notice(&e, true)) }
        @if let Some(m) = d.q("done") { (notice(&m, false)) }
        nav.tabs aria-label=(lang.t("转诊箱", "Referral boxes")) {
            a href="/workstation/referrals?box=in" aria-current=[(bx == "in").then_some("page")] { (lang.t("收到的转诊", "Received")) }
            a href="/workstation/referrals?box=out" aria-current=[(bx == "out").then_some("page")] { (lang.t("发出的转诊", "Sent")) }
        }
        @if r.status != 200 { (notice(&problem(&r), true)) }
        @if tasks.is_empty() { p.empty { (lang.t("暂无转诊。", "No referrals.")) } }
        ul {
            @for t in &tasks {
                @let id = t["id"].as_str().unwrap_or("");
                @let state = t["businessStatus"]["coding"][0]["code"].as_str().unwrap_or("");
                @let dir = ext(t, "https://hutong.dev/fhir/StructureDefinition/referral-direction").and_then(|e| e["valueCode"].as_str()).unwrap_or("up");
                li.item data-referral=(id) data-state=(state) {
                    strong { (ms(&t["authoredOn"]).map(local).unwrap_or_default()) }
                    " " (direction_label(lang, dir)) " · " (t["requester"]["display"].as_str().unwrap_or("")) " → " (t["owner"]["display"].as_str().unwrap_or(""))
                    " " span.tag { (state_label(lang, state)) }
                    @if t["priority"] == "urgent" { " " span.tag.warn { (lang.t("超时未接收", "Overdue")) } }
                    div.meta { (t["input"][0]["valueString"].as_str().unwrap_or("")) }
                    @if let Some(r) = t["statusReason"]["text"].as_str() { div.meta { (lang.t("说明：", "Note: ")) (r) } }
                    @if bx == "in" && state == "requested" {
                        form.inline method="post" action=(format!("/workstation/referrals/{id}")) {
                            input type="hidden" name="csrf" value=(d.s.csrf());
                            button type="submit" name="action" value="accept" { (lang.t("接收", "Accept")) }
                        }
                        form.inline method="post" action=(format!("/workstation/referrals/{id}")) {
                            input type="hidden" name="csrf" value=(d.s.csrf());
                            input name="reason" aria-label=(lang.t("拒绝原因", "Reason for rejecting")) placeholder=(lang.t("拒绝原因", "Reason")) required;
                            button.secondary type="submit" name="action" value="reject" { (lang.t("拒绝", "Reject")) }
                        }
                    }
                    @if bx == "out" && state == "accepted" {
                        a href=(format!("/workstation/referrals/{id}/book")) { (lang.t("预约接诊机构号源", "Book at the receiving institution")) }
                    }
                }
            }
        }
    };
    d.page(StatusCode::OK, lang.t("转诊", "Referrals"), body)
}

/// `POST /workstation/referrals/{task}`: accept or reject (the receiving side).
pub async fn referral_step(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(task): Path<String>,
    req: Request,
) -> Response {
    let (d, f) = match Desk::posted(&st, addr, req, Kind::Clinician, "/workstation").await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let mut p =
        vec![json!({"name": "action", "valueCode": f.get("action").cloned().unwrap_or_default()})];
    if let Some(r) = f.get("reason").filter(|r| !r.trim().is_empty()) {
        p.push(json!({"name": "reason", "valueString": r}));
    }
    if let Some(a) = f.get("appointment") {
        p.push(json!({"name": "appointment", "valueReference": {"reference": format!("Appointment/{a}")}}));
    }
    let r = d
        .ask(
            &st,
            "POST",
            &format!("Task/{task}/$referral"),
            &[],
            Some(&params(p)),
        )
        .await;
    let bx = if f.contains_key("appointment") {
        "out"
    } else {
        "in"
    };
    if r.status == 200 {
        back(
            &format!("/workstation/referrals?box={bx}&done"),
            "done",
            d.lang.t("已处理。", "Done."),
        )
    } else {
        back(
            &format!("/workstation/referrals?box={bx}&x"),
            "error",
            &problem(&r),
        )
    }
}

/// `GET /workstation/referrals/{task}/book`: the receiving institution's slots (the family
/// doctors' share included, for the referrer of a primary-care centre).
pub async fn referral_slots(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(task): Path<String>,
    req: Request,
) -> Response {
    let d = match desk(&st, &req, addr) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let lang = d.lang;
    let t = d.ask(&st, "GET", &format!("Task/{task}"), &[], None).await;
    if t.status != 200 {
        return d.page(
            StatusCode::NOT_FOUND,
            lang.t("转诊", "Referral"),
            notice(&problem(&t), true),
        );
    }
    let t = json_of(&t);
    let org = t["owner"]["reference"].as_str().unwrap_or("").to_string();
    // From two days ahead: the family doctors' share is theirs until then (nearer slots are
    // everyone's, and a referral is rarely for today).
    let now = hutong_fhir::date::now_ms();
    let s0 = hutong_fhir::date::format_instant(now + 2 * DAY);
    let s1 = hutong_fhir::date::format_instant(now + 16 * DAY);
    let found = d
        .ask(
            &st,
            "GET",
            "Appointment/$find",
            &[
                ("start", &s0),
                ("end", &s1),
                ("organization", &org),
                ("_count", "40"),
            ],
            None,
        )
        .await;
    let body = html! {
        p { (lang.t("转诊至：", "Referred to: ")) strong { (t["owner"]["display"].as_str().unwrap_or("")) } }
        p.meta { (lang.t("标注“家庭医生预留号”的号源只对家庭医生的转诊开放。", "Slots marked as the family doctors' share are kept for family doctors' referrals.")) }
        (slot_list(lang, &d.s.csrf(), &json_of(&found), &format!("/workstation/referrals/{task}/book"), &[]))
    };
    d.page(StatusCode::OK, lang.t("预约号源", "Book a slot"), body)
}

/// `POST /workstation/referrals/{task}/book`: books the slot on the referral and schedules it.
pub async fn referral_book(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(task): Path<String>,
    req: Request,
) -> Response {
    let (d, f) = match Desk::posted(&st, addr, req, Kind::Clinician, "/workstation").await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let t = json_of(&d.ask(&st, "GET", &format!("Task/{task}"), &[], None).await);
    let patient = t["for"]["reference"].as_str().unwrap_or("").to_string();
    let request = t["focus"]["reference"].as_str().unwrap_or("").to_string();
    let a = json!({"resourceType": "Appointment", "status": "proposed",
        "slot": [{"reference": format!("Slot/{}", f.get("slot").cloned().unwrap_or_default())}],
        "basedOn": [{"reference": request}],
        "participant": [{"actor": {"reference": patient}, "status": "needs-action"}]});
    let r = d
        .ask(
            &st,
            "POST",
            "Appointment/$book",
            &[],
            Some(&params(vec![
                json!({"name": "appointment-resource", "resource": a}),
            ])),
        )
        .await;
    if r.status != 200 {
        return back("/workstation/referrals?box=out&x", "error", &problem(&r));
    }
    let appt = json_of(&r)["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let s = d.ask(&st, "POST", &format!("Task/{task}/$referral"), &[], Some(&params(vec![
        json!({"name": "action", "valueCode": "schedule"}),
        json!({"name": "appointment", "valueReference": {"reference": format!("Appointment/{appt}")}}),
    ]))).await;
    if s.status == 200 {
        back(
            "/workstation/referrals?box=out&x",
            "done",
            d.lang.t(
                "已预约并通知接诊机构。",
                "Booked, and the receiving institution can see it.",
            ),
        )
    } else {
        back("/workstation/referrals?box=out&x", "error", &problem(&s))
    }
}

/// `GET /workstation/follow-ups[?status=…]`: the centre's follow-up worklist.
pub async fn follow_ups(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let d = match desk(&st, &req, addr) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let lang = d.lang;
    let status = d.q("status");
    let mut q: Vec<(&str, &str)> = vec![("_count", "100")];
    if let Some(s) = &status {
        q.push(("status", s));
    }
    let r = d.ask(&st, "GET", "$follow-ups", &q, None).await;
    let v = json_of(&r);
    // The centre's teams by name (its own CareTeams).
    let teams = d
        .ask(&st, "GET", "CareTeam", &[("_count", "100")], None)
        .await;
    let team_names: HashMap<String, String> = json_of(&teams)["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let t = &e["resource"];
            Some((
                format!("CareTeam/{}", t["id"].as_str()?),
                t["name"].as_str()?.to_string(),
            ))
        })
        .collect();
    let body = html! {
        @if r.status != 200 { (notice(&problem(&r), true)) }
        nav.tabs aria-label=(lang.t("随访状态", "Status")) {
            a href="/workstation/follow-ups" aria-current=[status.is_none().then_some("page")] { (lang.t("全部", "All")) }
            @for s in ["overdue", "due", "done"] {
                a href=(format!("/workstation/follow-ups?status={s}")) aria-current=[(status.as_deref() == Some(s)).then_some("page")] {
                    (state_label(lang, s)) " (" (v["counts"][s].as_u64().unwrap_or(0)) ")"
                }
            }
        }
        table {
            caption { (lang.t("家庭医生团队完成率（近12个月随访满4次）", "Teams' completion (four follow-ups in 12 months)")) }
            thead { tr { th { (lang.t("团队", "Team")) } th { (lang.t("管理人数", "Residents")) } th { (lang.t("规范管理", "Standard")) } th { (lang.t("完成率", "Rate")) } } }
            tbody {
                @for t in v["teams"].as_array().into_iter().flatten() {
                    tr {
                        td { (t["team"].as_str().map(|id| team_names.get(id).cloned().unwrap_or_else(|| id.trim_start_matches("CareTeam/").to_string())).unwrap_or_else(|| lang.t("未分团队", "No team").to_string())) }
                        td { (t["residents"]) } td { (t["standard"]) }
                        td { (format!("{:.0}%", t["completionRate"].as_f64().unwrap_or(0.0) * 100.0)) }
                    }
                }
            }
        }
        @if v["entries"].as_array().is_none_or(|e| e.is_empty()) { p.empty { (lang.t("名单为空。", "Nobody on the list.")) } }
        div.scroll { table {
            caption { (lang.t("慢病随访名单", "Follow-up list")) }
            thead { tr { th { (lang.t("居民", "Resident")) } th { (lang.t("病种", "Condition")) } th { (lang.t("上次随访", "Last")) } th { (lang.t("近12月次数", "In 12 months")) } th { (lang.t("应随访日期", "Due")) } th { (lang.t("状态", "Status")) } } }
            tbody {
                @for e in v["entries"].as_array().into_iter().flatten() {
                    @let s = e["status"].as_str().unwrap_or("");
                    tr data-status=(s) {
                        td { (e["name"].as_str().unwrap_or("")) }
                        td { (e["conditionsZh"].as_array().into_iter().flatten().filter_map(|c| c.as_str()).collect::<Vec<_>>().join("、")) }
                        td { (ms(&e["lastFollowUp"]).map(local).unwrap_or_else(|| "—".into()).get(..10).unwrap_or("—")) }
                        td { (e["followUpsInYear"]) }
                        td { (ms(&e["due"]).map(local).unwrap_or_default().get(..10).unwrap_or("")) }
                        td { span.tag { (state_label(lang, s)) } }
                    }
                }
            }
        } }
        p { a href="/workstation/follow-ups.csv" { (lang.t("导出名单（CSV）", "Export (CSV)")) } }
    };
    d.page(StatusCode::OK, lang.t("慢病随访", "Follow-ups"), body)
}

/// `GET /workstation/follow-ups.csv`.
pub async fn follow_ups_csv(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let d = match desk(&st, &req, addr) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let r = d
        .ask(&st, "GET", "$follow-ups", &[("format", "csv")], None)
        .await;
    let bytes = match r.body {
        hutong_server::wire::Body::Raw(b) => b,
        _ => Vec::new(),
    };
    (
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK),
        [
            ("content-type", "text/csv; charset=utf-8"),
            (
                "content-disposition",
                "attachment; filename=\"follow-ups.csv\"",
            ),
        ],
        bytes,
    )
        .into_response()
}

// -- the console -------------------------------------------------------------------------

/// `GET /console/coordination`: the pool's use and the referral flows.
pub async fn console(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let d = match Desk::or_sign_in(&st, &req, addr, Kind::Operator) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let lang = d.lang;
    let r = d.ask(&st, "GET", "$coordination", &[], None).await;
    if r.status != 200 {
        return d.page(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN),
            lang.t("业务协同", "Coordination"),
            notice(&problem(&r), true),
        );
    }
    let v = json_of(&r);
    let orgs = d
        .ask(&st, "GET", "Organization", &[("_count", "500")], None)
        .await;
    let names: HashMap<String, String> = json_of(&orgs)["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                format!("Organization/{}", e["resource"]["id"].as_str()?),
                e["resource"]["name"].as_str()?.to_string(),
            ))
        })
        .collect();
    // Per institution, and per day, over the period.
    const KEYS: [&str; 6] = [
        "slots",
        "booked",
        "held",
        "reserved",
        "reservedBooked",
        "released",
    ];
    let mut by_org: std::collections::BTreeMap<String, [i64; 6]> = Default::default();
    let mut by_day: std::collections::BTreeMap<String, [i64; 6]> = Default::default();
    for p in v["pool"].as_array().into_iter().flatten() {
        let org = by_org
            .entry(p["organization"].as_str().unwrap_or("").to_string())
            .or_default();
        for (i, k) in KEYS.iter().enumerate() {
            org[i] += p[*k].as_i64().unwrap_or(0);
        }
        let day = by_day
            .entry(p["day"].as_str().unwrap_or("").to_string())
            .or_default();
        for (i, k) in KEYS.iter().enumerate() {
            day[i] += p[*k].as_i64().unwrap_or(0);
        }
    }
    let rate = |n: &[i64; 6]| {
        if n[0] > 0 {
            format!("{:.1}%", n[1] as f64 * 100.0 / n[0] as f64)
        } else {
            "—".into()
        }
    };
    let head = html! {
        th { (lang.t("号源", "Slots")) } th { (lang.t("已预约", "Booked")) } th { (lang.t("锁定中", "Held")) }
        th { (lang.t("家庭医生预留", "Family doctors' share")) } th { (lang.t("预留号已约", "Share booked")) }
        th { (lang.t("预留号已释放", "Share released")) } th { (lang.t("预约率", "Booked %")) }
    };
    let cells = |n: &[i64; 6]| {
        html! {
            td { (n[0]) } td { (n[1]) } td { (n[2]) } td { (n[3]) } td { (n[4]) } td { (n[5]) } td { (rate(n)) }
        }
    };
    let body = html! {
        p.meta { (lang.t("号源池：今天起两周（北京时间）。预留号在就诊前48小时释放给所有人。", "Slot pool: today and the next 13 days (Beijing time). The family doctors' share is released to everyone 48 hours before.")) }
        div.scroll {
            table {
                caption { (lang.t("各机构号源使用", "Slot use by institution")) }
                thead { tr { th { (lang.t("机构", "Institution")) } (head) } }
                tbody {
                    @for (org, n) in &by_org {
                        tr { td { (names.get(org).cloned().unwrap_or_else(|| org.clone())) } (cells(n)) }
                    }
                }
            }
        }
        div.scroll {
            table {
                caption { (lang.t("每日号源使用", "Slot use by day")) }
                thead { tr { th { (lang.t("日期", "Day")) } (head) } }
                tbody {
                    @for (day, n) in &by_day { tr { td { (day) } (cells(n)) } }
                }
            }
        }
        table {
            caption { (lang.t("双向转诊", "Two-way referral")) }
            thead { tr { th { (lang.t("方向", "Direction")) } th { (lang.t("状态", "State")) } th { (lang.t("数量", "Count")) } } }
            tbody {
                @for f in v["referrals"].as_array().into_iter().flatten() {
                    tr { td { (direction_label(lang, f["direction"].as_str().unwrap_or(""))) } td { (state_label(lang, f["state"].as_str().unwrap_or(""))) } td { (f["count"]) } }
                }
            }
        }
        @if v["referrals"].as_array().is_none_or(|r| r.is_empty()) { p.empty { (lang.t("还没有转诊。", "No referrals yet.")) } }
    };
    d.page(StatusCode::OK, lang.t("业务协同", "Coordination"), body)
}

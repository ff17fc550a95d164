//! The portal's protections over HTTP, without a browser: pages need a resident's session,
//! the session cookie is HTTP-only and same-site, forms without the session's CSRF token are
//! refused, a forged session is no session, and a page shows only what the resident's own
//! authorization shows. The operations console opens only the sections an operator's roles
//! hold, takes no other kind of account, and refuses decisions without the form token.

use hutong_access::accounts::User;
use hutong_access::principal::{Kind, Principal, Role};
use hutong_server::{Application, Settings};
use serde_json::{json, Value};

struct Portal {
    root: String,
    platform: String,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

const PASSWORD: &str = "correct horse battery";

async fn start() -> Portal {
    let dir =
        std::env::temp_dir().join(format!("hutong-web-{}-{}", std::process::id(), uuid_like()));
    let s = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        link_interval: None,
        dev_outbox: true,
        ..Settings::new(dir.display().to_string())
    };
    let app = Application::build(s)
        .await
        .unwrap()
        .with_routes(hutong_web::routes);
    for (user, kind, roles, institution) in [
        ("steward", Kind::Operator, vec![Role::IdentitySteward], None),
        ("quality", Kind::Operator, vec![Role::QualityOfficer], None),
        (
            "doctor",
            Kind::Clinician,
            vec![],
            Some("urn:hutong:org:web"),
        ),
    ] {
        app.engine
            .access
            .accounts
            .add_user(
                &User {
                    username: user.into(),
                    kind,
                    name: user.into(),
                    institution: institution.map(String::from),
                    practitioner: None,
                    roles,
                },
                PASSWORD,
            )
            .unwrap();
    }
    let root = format!("http://127.0.0.1:{}", app.port());
    let platform = app
        .engine
        .access
        .tokens
        .issue_for(&Principal::platform("web-test"), 3600);
    tokio::spawn(app.run_until(std::future::pending()));
    Portal {
        root,
        platform,
        _dir: tempdir::Dir(dir),
    }
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `name=value` of a Set-Cookie header named `name`, with its attributes.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(String::from)
}

fn value(cookie: &str) -> String {
    cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string()
}

async fn put(p: &Portal, path: &str, v: Value) {
    let r = client()
        .put(format!("{}/fhir/{path}", p.root))
        .bearer_auth(&p.platform)
        .header("content-type", "application/fhir+json")
        .body(v.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().as_u16() < 300, "{}", r.text().await.unwrap());
}

/// Signs a resident in through the portal's forms; the session cookie.
async fn sign_in(p: &Portal, phone: &str) -> String {
    let c = client();
    let r = c
        .get(format!("{}/portal/login", p.root))
        .send()
        .await
        .unwrap();
    let pre = value(&set_cookie(&r, "hutong_pre").expect("a pre-session token"));
    let r = c
        .post(format!("{}/portal/login", p.root))
        .header("cookie", format!("hutong_pre={pre}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={pre}&phone={phone}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let outbox: Value = c
        .get(format!("{}/dev/outbox?to={phone}", p.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let body = outbox["messages"].as_array().unwrap().last().unwrap()["body"]
        .as_str()
        .unwrap()
        .to_string();
    let code: String = body
        .split("验证码")
        .nth(1)
        .unwrap()
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    let r = c
        .post(format!("{}/portal/login/verify", p.root))
        .header("cookie", format!("hutong_pre={pre}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={pre}&phone={phone}&code={code}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    let cookie = set_cookie(&r, "hutong_session").expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    value(&cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_csrf_and_the_access_decision_hold_on_pages() {
    let p = start().await;
    for (id, name, phone) in [("w1", "周芳", "13900001111"), ("w2", "吴磊", "13900002222")] {
        put(
            &p,
            &format!("Patient/{id}"),
            json!({"resourceType": "Patient", "id": id,
            "name": [{"text": name}], "birthDate": "1980-01-01",
            "telecom": [{"system": "phone", "value": phone}],
            "identifier": [{"system": "urn:mrn:web", "value": id}]}),
        )
        .await;
        put(&p, &format!("Observation/{id}-o"), json!({"resourceType": "Observation", "id": format!("{id}-o"),
            "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "心率"},
            "subject": {"reference": format!("Patient/{id}")}, "effectiveDateTime": "2026-03-01T08:00:00+08:00",
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}))
        .await;
    }
    let c = client();
    // No session: to the sign-in page. A forged one is no session either.
    let r = c.get(format!("{}/portal", p.root)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/portal/login");
    let r = c
        .get(format!("{}/portal", p.root))
        .header("cookie", "hutong_session=eyJhbGciOiJFZERTQSJ9.e30.AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // A login form posted without its pre-session token is refused.
    let r = c
        .post(format!("{}/portal/login", p.root))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("phone=13900001111")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let me = sign_in(&p, "13900001111").await;
    let cookie = format!("hutong_session={me}");
    let r = c
        .get(format!("{}/portal", p.root))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("心率: 72 /min") && page.contains("/portal/item/Observation/w1-o"),
        "{page}"
    );
    assert!(
        !page.contains("w2-o"),
        "another resident's record is not shown"
    );
    // Another resident's item: refused by the access decision, not shown.
    let r = c
        .get(format!("{}/portal/item/Observation/w2-o", p.root))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(!r.text().await.unwrap().contains("72 /min"));
    // A form without the session's CSRF token changes nothing.
    let r = c
        .post(format!("{}/portal/item/Observation/w1-o/report", p.root))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("category=not-mine&description=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let orders: Value = c
        .get(format!("{}/fhir/$work-orders?state=all", p.root))
        .bearer_auth(&p.platform)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(orders["total"], 0);
    // Pages answer with protective headers.
    let r = c
        .get(format!("{}/portal/access", p.root))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    // Signing out clears the cookie.
    let page = c
        .get(format!("{}/portal", p.root))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let r = c
        .post(format!("{}/portal/logout", p.root))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(set_cookie(&r, "hutong_session")
        .unwrap()
        .contains("Max-Age=0"));
}

/// Signs in at the console's form; the answer.
async fn console_sign_in(p: &Portal, user: &str) -> reqwest::Response {
    client()
        .post(format!("{}/console/login", p.root))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "username={user}&password={}",
            PASSWORD.replace(' ', "+")
        ))
        .send()
        .await
        .unwrap()
}

async fn get(p: &Portal, path: &str, cookie: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}{path}", p.root))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_opens_what_an_operators_roles_hold() {
    let p = start().await;
    // Unsigned: the sign-in page, and every section sends there.
    let (status, page) = get(&p, "/console", "").await;
    assert_eq!(status, 200);
    assert!(page.contains("运营人员登录"), "{page}");
    let r = client()
        .get(format!("{}/console/intake", p.root))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console");
    // A clinician's account is not an operator's; a wrong password is refused.
    let r = console_sign_in(&p, "doctor").await;
    assert_eq!(r.status(), 403);
    assert!(set_cookie(&r, "hutong_session").is_none());
    let r = client()
        .post(format!("{}/console/login", p.root))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=steward&password=guess")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(set_cookie(&r, "hutong_session").is_none());

    let r = console_sign_in(&p, "steward").await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console");
    let steward = value(&set_cookie(&r, "hutong_session").unwrap());
    let steward = format!("hutong_session={steward}");
    let (status, page) = get(&p, "/console", &steward).await;
    assert_eq!(status, 200);
    assert!(page.contains("/console/identity") && !page.contains("/console/intake"));
    let (status, page) = get(&p, "/console/identity", &steward).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("队列为空"), "{page}");
    // Not the steward's: intake, scorecards, work orders.
    for path in [
        "/console/intake",
        "/console/quality",
        "/console/work-orders",
    ] {
        assert_eq!(get(&p, path, &steward).await.0, 403, "{path}");
    }
    // A decision without the session's form token changes nothing.
    let r = client()
        .post(format!("{}/console/identity/some-task", p.root))
        .header("cookie", &steward)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("decision=same&reason=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The quality officer: intake and scorecards of what the platform received.
    put(
        &p,
        "Patient/q1",
        json!({"resourceType": "Patient", "id": "q1", "name": [{"text": "郑洁"}],
        "birthDate": "1970-02-03", "identifier": [{"system": "urn:mrn:web", "value": "q1"}]}),
    )
    .await;
    let r = console_sign_in(&p, "quality").await;
    let quality = format!(
        "hutong_session={}",
        value(&set_cookie(&r, "hutong_session").unwrap())
    );
    let (status, page) = get(&p, "/console/intake?hours=6", &quality).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<svg") && page.contains("数据接入"), "{page}");
    let (status, page) = get(&p, "/console/intake?hours=9999", &quality).await;
    assert_eq!(status, 400, "{page}");
    let (status, page) = get(&p, "/console/quality", &quality).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("全区得分"), "{page}");
    let r = client()
        .get(format!("{}/console/quality/export?format=csv", p.root))
        .header("cookie", &quality)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert!(r.text().await.unwrap().starts_with("level,source"));
    let (status, _) = get(&p, "/console/work-orders?show=overdue", &quality).await;
    assert_eq!(status, 200);
    assert_eq!(get(&p, "/console/identity", &quality).await.0, 403);
    assert_eq!(get(&p, "/console/audit", &quality).await.0, 403);
}

/// A FHIR API answer read as the platform.
async fn api_get(p: &Portal, url: String) -> Value {
    let r = client()
        .get(url)
        .bearer_auth(&p.platform)
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

/// The `csrf` form token on a page.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .expect("a form on the page")
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

async fn post_form(p: &Portal, path: &str, cookie: &str, body: String) -> reqwest::Response {
    client()
        .post(format!("{}{path}", p.root))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residents_restrict_items_authorize_institutions_and_act_as_proxies() {
    let p = start().await;
    let mother = hutong_cn::idcard::make(330106, 1950, 4, 2, 22);
    let son = hutong_cn::idcard::make(330106, 1978, 9, 30, 11);
    for (id, name, phone, idn) in [
        ("m1", "沈秀英", "13900003333", &mother),
        ("s1", "沈立", "13900004444", &son),
    ] {
        put(
            &p,
            &format!("Patient/{id}"),
            json!({"resourceType": "Patient", "id": id, "name": [{"text": name}],
            "birthDate": format!("{}-{}-{}", &idn[6..10], &idn[10..12], &idn[12..14]),
            "telecom": [{"system": "phone", "value": phone}],
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": idn},
                           {"system": "urn:mrn:web", "value": id}]}),
        )
        .await;
        put(&p, &format!("Observation/{id}-o"), json!({"resourceType": "Observation", "id": format!("{id}-o"),
            "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "心率"},
            "subject": {"reference": format!("Patient/{id}")}, "effectiveDateTime": "2026-03-01T08:00:00+08:00",
            "valueQuantity": {"value": 64, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}))
        .await;
        put(&p, &format!("Observation/{id}-p"), json!({"resourceType": "Observation", "id": format!("{id}-p"),
            "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "心率"},
            "subject": {"reference": format!("Patient/{id}")}, "effectiveDateTime": "2026-04-01T08:00:00+08:00",
            "valueQuantity": {"value": 70, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}))
        .await;
    }
    put(
        &p,
        "Organization/fam",
        json!({"resourceType": "Organization", "id": "fam", "name": "翠苑社区卫生服务中心",
        "identifier": [{"system": "https://hutong.dev/sid/uscc", "value": "12330106FAM"}]}),
    )
    .await;
    let mum = format!("hutong_session={}", sign_in(&p, "13900003333").await);

    // Restrict an item, see it marked, on the page and through the API.
    let (status, page) = get(&p, "/portal/item/Observation/m1-o", &mum).await;
    assert_eq!(status, 200, "{page}");
    assert!(!page.contains("data-restricted"));
    let r = post_form(
        &p,
        "/portal/item/Observation/m1-o/restrict",
        &mum,
        format!("csrf={}&on=1", csrf_of(&page)),
    )
    .await;
    assert_eq!(r.status(), 303);
    let (_, page) = get(&p, "/portal/item/Observation/m1-o", &mum).await;
    assert!(page.contains("data-restricted=\"true\""), "{page}");
    let v: Value = api_get(&p, format!("{}/fhir/Observation/m1-o", p.root)).await;
    assert!(
        v["meta"]["security"]
            .to_string()
            .contains("resident-restricted"),
        "{v}"
    );
    // Another resident's item is not hers to restrict.
    let r = post_form(
        &p,
        "/portal/item/Observation/s1-o/restrict",
        &mum,
        format!("csrf={}&on=1", csrf_of(&page)),
    )
    .await;
    assert_eq!(r.status(), 403);

    // A standing authorization for the family doctor's centre, opening mental health.
    let (_, page) = get(&p, "/portal/access", &mum).await;
    assert!(page.contains("翠苑社区卫生服务中心"), "{page}");
    let csrf = csrf_of(&page);
    let r = post_form(
        &p,
        "/portal/grant",
        &mum,
        format!("csrf={csrf}&institution=urn%3Ahutong%3Aorg%3A12330106FAM&category=mental-health"),
    )
    .await;
    assert_eq!(r.status(), 303);
    let (_, page) = get(&p, "/portal/access", &mum).await;
    assert!(
        page.contains("长期授权") && page.contains("精神心理"),
        "{page}"
    );
    // An unknown ID number makes nobody a proxy.
    let r = post_form(
        &p,
        "/portal/proxy",
        &mum,
        format!("csrf={csrf}&id_number=110101199001011237"),
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = post_form(
        &p,
        "/portal/proxy",
        &mum,
        format!("csrf={csrf}&id_number={son}"),
    )
    .await;
    assert_eq!(r.status(), 303);

    // The son, her proxy, opens her record from his access page.
    let son_cookie = format!("hutong_session={}", sign_in(&p, "13900004444").await);
    let (_, page) = get(&p, "/portal/access", &son_cookie).await;
    let person = page
        .split("data-proxy-for=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("the son is proxy for someone: {page}"))
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let r = post_form(
        &p,
        "/portal/act",
        &son_cookie,
        format!("csrf={}&for={person}", csrf_of(&page)),
    )
    .await;
    assert_eq!(r.status(), 303);
    let acting = set_cookie(&r, "hutong_for").unwrap();
    assert!(acting.contains("HttpOnly"), "{acting}");
    let both = format!("{son_cookie}; hutong_for={}", value(&acting));
    let (status, page) = get(&p, "/portal", &both).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("data-acting") && page.contains("/portal/item/Observation/m1-p"),
        "{page}"
    );
    assert!(
        !page.contains("/portal/item/Observation/m1-o"),
        "what she restricted stays hidden from a proxy whose grant does not name it"
    );
    assert!(
        !page.contains("/portal/item/Observation/s1-"),
        "his own record is not mixed in"
    );
    // The mother is not her son's proxy: naming his record shows her nothing of it.
    let found: Value = api_get(
        &p,
        format!(
            "{}/fhir/Person?identifier=urn:oid:2.16.156.10011.1.3|{son}",
            p.root
        ),
    )
    .await;
    let his = found["entry"][0]["resource"]["id"].as_str().unwrap();
    let forged = format!("{mum}; hutong_for={his}");
    let (status, page) = get(&p, "/portal", &forged).await;
    assert_eq!(status, 403, "{page}");
    assert!(!page.contains("s1-o"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clinicians_find_people_by_health_card_and_their_own_record_number() {
    let p = start().await;
    put(
        &p,
        "Patient/hc1",
        json!({"resourceType": "Patient", "id": "hc1", "name": [{"text": "郑洁"}],
        "birthDate": "1970-02-03", "identifier": [
            {"system": "https://hutong.dev/sid/health-card", "value": "HC20260001"},
            {"system": "https://hutong.dev/sid/web/mrn", "value": "M77"},
            {"system": "https://hutong.dev/sid/other/mrn", "value": "M88"}]}),
    )
    .await;
    let r = client()
        .post(format!("{}/workstation/login", p.root))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "username=doctor&password={}",
            PASSWORD.replace(' ', "+")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let desk = format!(
        "hutong_session={}",
        value(&set_cookie(&r, "hutong_session").unwrap())
    );
    for query in ["health_card=HC20260001", "mrn=M77"] {
        let (status, page) = get(&p, &format!("/workstation?{query}"), &desk).await;
        assert_eq!(status, 200, "{page}");
        assert!(
            page.contains("/workstation/person/") && page.contains("郑*"),
            "{query}: found, masked: {page}"
        );
        assert!(
            !page.contains("郑洁"),
            "{query}: not unmasked before authorization"
        );
    }
    // Another institution's record number is not ours to look up by.
    let (_, page) = get(&p, "/workstation?mrn=M88", &desk).await;
    assert!(!page.contains("/workstation/person/"), "{page}");
}

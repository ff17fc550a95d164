//! Subscriptions over HTTP (Subscriptions R5 Backport IG for R4, and classic R4): a real
//! receiver on a loopback port. Notifications are reads by the subscriber — what it may not
//! read never reaches it, revoked consent stops the flow — numbered per subscription, signed,
//! retried until the receiver takes them, and fetched again with `$events`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use hutong_exchange::ig;
use hutong_exchange::notify::{events_of, verify};
use serde_json::{json, Value};

use crate::access::{create_as, grant_by_sms, observation, params, region, Region, A, B};
use crate::helpers::TestApp;

crate::on_both_with!(super::settings;
    notifications_are_reads_by_the_subscriber,
    a_receiver_that_was_down_gets_everything_once_in_order,
    classic_and_websocket_subscriptions_deliver,
    assigned_tasks_and_follow_ups_reach_their_institution,
    bad_subscriptions_are_refused_precisely,
    district_filters_follow_the_residents_address,
    heartbeats_keep_a_quiet_channel_alive,
    deletions_reach_filters_on_codes,
);

fn settings(_: &mut hutong_server::Settings) {}

const SECRET: &str = "a-shared-secret-of-the-receiver";

/// What a receiver got: method, path, headers, body.
#[derive(Clone, Debug)]
pub(crate) struct Got {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

#[derive(Clone, Default)]
pub(crate) struct Receiver {
    pub got: Arc<Mutex<Vec<Got>>>,
    pub down: Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port: its base URL.
    pub async fn start(&self) -> String {
        async fn take(
            State(r): State<Receiver>,
            method: axum::http::Method,
            uri: axum::http::Uri,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> StatusCode {
            if r.down.load(std::sync::atomic::Ordering::SeqCst) {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            r.got.lock().unwrap().push(Got {
                method: method.to_string(),
                path: uri.path().to_string(),
                headers,
                body: body.to_vec(),
            });
            StatusCode::OK
        }
        let app = axum::Router::new()
            .route("/{*rest}", any(take))
            .with_state(self.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://127.0.0.1:{port}/hook")
    }

    pub fn bundles(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|g| serde_json::from_slice(&g.body).ok())
            .collect()
    }

    /// The event numbers and foci of every event notification received, in order.
    pub fn events(&self) -> Vec<(i64, Option<String>)> {
        self.bundles()
            .iter()
            .filter(|b| kind(b) == "event-notification")
            .flat_map(events_of)
            .collect()
    }

    /// Waits until `f` holds (up to 20 s).
    pub async fn until(&self, what: &str, f: impl Fn(&Receiver) -> bool) {
        for _ in 0..400 {
            if f(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}; got {:?}", self.bundles());
    }
}

pub(crate) fn kind(bundle: &Value) -> String {
    bundle["entry"][0]["resource"]["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "type")
        .and_then(|p| p["valueCode"].as_str())
        .unwrap_or("")
        .to_string()
}

pub(crate) fn backport(topic: &str, filters: &[&str], endpoint: &str, content: &str) -> Value {
    let mut v = json!({
        "resourceType": "Subscription", "status": "requested", "reason": "test",
        "meta": {"profile": [ig::SUBSCRIPTION_PROFILE]},
        "criteria": topic,
        "extension": [{"url": ig::SIGNING_SECRET, "valueString": SECRET}],
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
            "header": ["Authorization: Bearer receiver-token"],
            "_payload": {"extension": [{"url": ig::PAYLOAD_CONTENT, "valueCode": content}]}}
    });
    if !filters.is_empty() {
        v["_criteria"] = json!({"extension": filters.iter().map(|f| json!({"url": ig::FILTER_CRITERIA, "valueString": f})).collect::<Vec<_>>()});
    }
    v
}

const RECORD_CHANGED: &str = hutong_exchange::topic::RECORD_CHANGED;

async fn notifications_are_reads_by_the_subscriber(app: &TestApp) {
    let r: Region = region(app).await;
    let (sa, sb) = (app.system(A), app.system(B));
    let rx = Receiver::default();
    let hook = rx.start().await;
    let sub = create_as(
        app,
        &sa,
        backport(
            RECORD_CHANGED,
            &["Observation?code=4548-4"],
            &hook,
            "full-resource",
        ),
    )
    .await;
    rx.until("the handshake", |r| {
        r.bundles().iter().any(|b| kind(b) == "handshake")
    })
    .await;
    let st = app
        .send_as(
            &sa,
            "GET",
            &format!("Subscription/{sub}/$status"),
            None,
            &[],
        )
        .await;
    assert_eq!(st.status, 200, "{}", st.body);
    let p = st.body["entry"][0]["resource"]["parameter"].to_string();
    assert!(
        p.contains("\"active\"") && p.contains("query-status"),
        "{p}"
    );

    // B's HbA1c of the resident: A has no grant, so A hears nothing of it.
    let hidden = create_as(app, &sb, observation(&r.pb, "4548-4")).await;
    // A's own HbA1c: notified. A glucose of A's: not (the filter is on the code).
    let own = create_as(app, &sa, observation(&r.pa, "4548-4")).await;
    create_as(app, &sa, observation(&r.pa, "2345-7")).await;
    rx.until("event 1", |r| r.events().len() == 1).await;
    assert_eq!(rx.events()[0].0, 1);
    assert!(rx.events()[0]
        .1
        .as_deref()
        .unwrap()
        .ends_with(&format!("/Observation/{own}")));

    // With the resident's consent, B's new results reach A.
    let consent = grant_by_sms(app, &r, &[]).await;
    let shared = create_as(app, &sb, observation(&r.pb, "4548-4")).await;
    rx.until("event 2", |r| r.events().len() == 2).await;
    let last = rx
        .bundles()
        .into_iter()
        .rfind(|b| kind(b) == "event-notification")
        .unwrap();
    assert_eq!(
        last["entry"][1]["resource"]["id"],
        shared.as_str(),
        "the full resource"
    );
    assert_eq!(
        events_of(&last),
        vec![(2, Some(format!("{}/Observation/{shared}", app.base)))]
    );

    // Every notification carries the receiver's header and the signature over its body.
    for g in rx.got.lock().unwrap().iter() {
        assert_eq!(g.headers["authorization"], "Bearer receiver-token");
        let sig = g.headers["x-hutong-signature"].to_str().unwrap();
        assert!(verify(SECRET, &g.body, sig), "a signature that checks");
    }

    // Reading the subscription shows no credentials; written back as read, it keeps them
    // (the next notifications are still signed with the secret).
    let read = app
        .send_as(&sa, "GET", &format!("Subscription/{sub}"), None, &[])
        .await;
    let shown = read.body.to_string();
    assert!(
        !shown.contains(SECRET) && !shown.contains("receiver-token"),
        "{shown}"
    );
    assert!(shown.contains("Authorization: ***"), "{shown}");
    let back = app
        .send_as(
            &sa,
            "PUT",
            &format!("Subscription/{sub}"),
            Some(read.body.clone()),
            &[],
        )
        .await;
    assert_eq!(back.status, 200, "{}", back.body);
    assert!(!back.body.to_string().contains(SECRET));
    let other = app
        .send_as(
            &sb,
            "PUT",
            &format!("Subscription/{sub}"),
            Some(read.body.clone()),
            &[],
        )
        .await;
    assert!(other.status >= 400, "{}", other.body);
    assert!(!other.body.to_string().contains(SECRET));

    // Revoked: nothing more of B's flows; A's own still does.
    let me = app.resident(&r.person);
    let rv = app
        .send_as(
            &me,
            "POST",
            &format!("Consent/{consent}/$revoke"),
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(rv.status, 200, "{}", rv.body);
    // Grants reach the access decision within a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    create_as(app, &sb, observation(&r.pb, "4548-4")).await;
    let own2 = create_as(app, &sa, observation(&r.pa, "4548-4")).await;
    rx.until("event 3", |r| r.events().len() == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ev = rx.events();
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert!(ev[2].1.as_deref().unwrap().contains(&own2));
    let all = rx
        .bundles()
        .iter()
        .map(|b| b.to_string())
        .collect::<String>();
    assert!(
        !all.contains(&hidden),
        "a record A may not read never reaches it"
    );
    // Signed with the secret after the write-back too.
    for g in rx.got.lock().unwrap().iter() {
        let sig = g.headers["x-hutong-signature"].to_str().unwrap();
        assert!(verify(SECRET, &g.body, sig));
        assert_eq!(g.headers["authorization"], "Bearer receiver-token");
    }

    // $events gives back what was sent, as A reads now: B's result is withheld (revoked),
    // its number kept.
    let ev = app
        .send_as(
            &sa,
            "GET",
            &format!("Subscription/{sub}/$events?eventsSinceNumber=1&content=id-only"),
            None,
            &[],
        )
        .await;
    assert_eq!(ev.status, 200, "{}", ev.body);
    assert_eq!(kind(&ev.body), "query-event");
    let got = events_of(&ev.body);
    assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(
        got[1].1.is_none(),
        "withheld since the consent was revoked: {got:?}"
    );
    assert!(got[2].1.is_some());
    // Another institution cannot read A's subscription or its events.
    let other = app
        .send_as(
            &sb,
            "GET",
            &format!("Subscription/{sub}/$events"),
            None,
            &[],
        )
        .await;
    assert_eq!(other.status, 403, "{}", other.body);
    // Nor can a colleague at A, whose reads differ from the system's.
    let colleague = app.clinician(A);
    for path in [
        format!("Subscription/{sub}/$events"),
        format!("Subscription/{sub}/$status"),
    ] {
        let r = app.send_as(&colleague, "GET", &path, None, &[]).await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }

    // The notification of B's result is in the audit trail as a read by A's system.
    app.flush_audit();
    let trail = app
        .send_as(
            &app.operator(&[hutong_access::principal::Role::Auditor]),
            "GET",
            &format!("AuditEvent?entity=Observation/{shared}&_count=50"),
            None,
            &[],
        )
        .await;
    let t = trail.body.to_string();
    assert!(
        t.contains("subscription-notify") && t.contains("his@urn:hutong:org:91330100A"),
        "{t}"
    );
}

async fn a_receiver_that_was_down_gets_everything_once_in_order(app: &TestApp) {
    let r: Region = region(app).await;
    let sa = app.system(A);
    let rx = Receiver::default();
    let hook = rx.start().await;
    let filter = format!("Observation?subject=Patient/{}", r.pa);
    let mut s = backport(RECORD_CHANGED, &[&filter], &hook, "id-only");
    s["channel"]["extension"] = json!([{"url": ig::MAX_COUNT, "valuePositiveInt": 3}]);
    let sub = create_as(app, &sa, s).await;
    rx.until("the handshake", |r| !r.bundles().is_empty()).await;
    rx.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(create_as(app, &sa, observation(&r.pa, "4548-4")).await);
    }
    // It fails and says so.
    let mut errored = false;
    for _ in 0..100 {
        let st = app
            .send_as(
                &sa,
                "GET",
                &format!("Subscription/{sub}/$status"),
                None,
                &[],
            )
            .await;
        if st.body.to_string().contains("\"error\"") {
            errored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(errored, "the status shows the failing endpoint");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rx.down.store(false, std::sync::atomic::Ordering::SeqCst);
    rx.until("all eight", |r| r.events().len() >= 8).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ev = rx.events();
    assert_eq!(
        ev.iter().map(|e| e.0).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<i64>>(),
        "once each, in order"
    );
    for (e, id) in ev.iter().zip(&ids) {
        assert!(e.1.as_deref().unwrap().contains(id.as_str()));
    }
    assert!(
        rx.bundles()
            .iter()
            .filter(|b| kind(b) == "event-notification")
            .all(|b| events_of(b).len() <= 3),
        "max-count"
    );

    // Delivered events are kept a week for $events, then go; undelivered ones stay.
    let ev = app
        .send_as(
            &sa,
            "GET",
            &format!("Subscription/{sub}/$events"),
            None,
            &[],
        )
        .await;
    assert_eq!(events_of(&ev.body).len(), 8, "{}", ev.body);
    let week = hutong_server::exchange::EVENT_RETENTION_MS;
    let store = app.engine.store.clone();
    let gone = tokio::task::spawn_blocking(move || {
        hutong_server::exchange::prune_events(&store, hutong_fhir::date::now_ms() + week + 1)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(gone, 8);
    let ev = app
        .send_as(
            &sa,
            "GET",
            &format!("Subscription/{sub}/$events"),
            None,
            &[],
        )
        .await;
    assert!(events_of(&ev.body).is_empty(), "{}", ev.body);
    assert!(
        ev.body.to_string().contains("\"8\""),
        "the count since the start stays: {}",
        ev.body
    );
}

async fn classic_and_websocket_subscriptions_deliver(app: &TestApp) {
    use futures_util::{SinkExt, StreamExt};
    let r: Region = region(app).await;
    let sa = app.system(A);
    // Classic R4: criteria a search, payload the resource, PUT to [endpoint]/[type]/[id].
    let rx = Receiver::default();
    let hook = rx.start().await;
    create_as(
        app,
        &sa,
        json!({"resourceType": "Subscription", "status": "requested", "reason": "classic",
        "criteria": format!("Observation?code=4548-4&subject=Patient/{}", r.pa),
        "channel": {"type": "rest-hook", "endpoint": hook, "payload": "application/fhir+json"}}),
    )
    .await;
    // Websocket: bound with a token.
    let ws_sub = create_as(app, &sa, json!({"resourceType": "Subscription", "status": "requested", "reason": "ws",
        "criteria": RECORD_CHANGED,
        "_criteria": {"extension": [{"url": ig::FILTER_CRITERIA, "valueString": "Observation?code=4548-4"}]},
        "channel": {"type": "websocket", "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": ig::PAYLOAD_CONTENT, "valueCode": "id-only"}]}}})).await;
    let t = app
        .send_as(
            &sa,
            "POST",
            &format!("Subscription/{ws_sub}/$get-ws-binding-token"),
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(t.status, 200, "{}", t.body);
    let p = t.body["parameter"].as_array().unwrap();
    let token = p.iter().find(|x| x["name"] == "token").unwrap()["valueString"]
        .as_str()
        .unwrap()
        .to_string();
    let url = p.iter().find(|x| x["name"] == "websocket-url").unwrap()["valueUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("the websocket opens");
    ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
        "bind-with-token {token}"
    )))
    .await
    .unwrap();
    let mut frames = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    frames.push(serde_json::from_str::<Value>(first.to_text().unwrap()).unwrap());
    assert_eq!(kind(&frames[0]), "handshake");
    // The token binds once.
    let (mut again, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    again
        .send(tokio_tungstenite::tungstenite::Message::text(format!(
            "bind-with-token {token}"
        )))
        .await
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), again.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        refused.to_text().unwrap().starts_with("error"),
        "{refused:?}"
    );

    let o = create_as(app, &sa, observation(&r.pa, "4548-4")).await;
    rx.until("the classic PUT", |r| !r.got.lock().unwrap().is_empty())
        .await;
    let got = rx.got.lock().unwrap()[0].clone();
    assert_eq!(
        (got.method.as_str(), got.path.as_str()),
        ("PUT", format!("/hook/Observation/{o}").as_str())
    );
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["id"], o.as_str());
    assert_eq!(got.headers["x-hutong-event-number"], "1");

    let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let b: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(kind(&b), "event-notification");
    assert_eq!(
        events_of(&b),
        vec![(1, Some(format!("{}/Observation/{o}", app.base)))]
    );
}

async fn assigned_tasks_and_follow_ups_reach_their_institution(app: &TestApp) {
    let _r: Region = region(app).await;
    let (sa, sb) = (app.system(A), app.system(B));
    let rx = Receiver::default();
    let hook = rx.start().await;
    create_as(
        app,
        &sb,
        backport(
            hutong_exchange::topic::TASK_ASSIGNED,
            &[],
            &hook,
            "full-resource",
        ),
    )
    .await;
    rx.until("the handshake", |r| !r.bundles().is_empty()).await;
    // A Task A assigns to B (by reference to B's Organization), and one it keeps.
    let to_b = create_as(
        app,
        &sa,
        json!({"resourceType": "Task", "status": "requested", "intent": "order",
        "owner": {"reference": "Organization/b"}, "description": "for B"}),
    )
    .await;
    create_as(
        app,
        &sa,
        json!({"resourceType": "Task", "status": "requested", "intent": "order",
        "owner": {"reference": "Organization/a"}, "description": "for A"}),
    )
    .await;
    rx.until("B's task", |r| !r.events().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ev = rx.events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(
        ev[0].1.as_deref().unwrap().contains(&to_b),
        "B is told of the Task assigned to it, though A filed it"
    );
}

async fn bad_subscriptions_are_refused_precisely(app: &TestApp) {
    let _r: Region = region(app).await;
    let sa = app.system(A);
    let hook = "http://127.0.0.1:9/hook";
    let refused = |r: &crate::helpers::Res, status: u16, expr: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.body["resourceType"], "OperationOutcome");
        assert_eq!(r.body["issue"][0]["expression"][0], expr, "{}", r.body);
    };
    let post = |v: Value| {
        let sa = sa.clone();
        async move { app.send_as(&sa, "POST", "Subscription", Some(v), &[]).await }
    };
    let r = post(backport(
        "https://example.org/SubscriptionTopic/none",
        &[],
        hook,
        "id-only",
    ))
    .await;
    refused(&r, 422, "Subscription.criteria");
    assert!(r.diagnostics().contains("not offered"));
    let r = post(backport(
        RECORD_CHANGED,
        &["Observation?no-such-param=1"],
        hook,
        "id-only",
    ))
    .await;
    refused(&r, 422, "Subscription._criteria.extension[0]");
    let r = post(backport(
        hutong_exchange::topic::TASK_ASSIGNED,
        &["Observation?code=1"],
        hook,
        "id-only",
    ))
    .await;
    refused(&r, 422, "Subscription._criteria.extension[0]");
    let mut v = backport(RECORD_CHANGED, &[], hook, "id-only");
    v["channel"]["type"] = json!("email");
    refused(&post(v).await, 422, "Subscription.channel.type");
    let mut v = backport(RECORD_CHANGED, &[], hook, "everything");
    v["channel"]["type"] = json!("rest-hook");
    refused(&post(v).await, 422, "Subscription.channel.payload");
    let r = post(json!({"resourceType": "Subscription", "status": "requested", "reason": "x",
        "criteria": "Observation?code:nonsense=1", "channel": {"type": "rest-hook", "endpoint": hook}})).await;
    refused(&r, 422, "Subscription.criteria");
    // A filter on a type the token may not read.
    let narrow = app.token_for(&hutong_access::principal::Principal {
        kind: hutong_access::principal::Kind::System,
        subject: "lab@A".into(),
        name: None,
        institution: Some(A.into()),
        practitioner: None,
        person: None,
        roles: vec![],
        scopes: hutong_access::principal::Scopes::parse(
            "system/Observation.rs system/Subscription.cruds",
        ),
        booking: false,
    });
    let r = app
        .send_as(
            &narrow,
            "POST",
            "Subscription",
            Some(backport(
                RECORD_CHANGED,
                &["Condition?code=E11"],
                hook,
                "id-only",
            )),
            &[],
        )
        .await;
    refused(&r, 403, "Subscription._criteria.extension[0]");
    // Nothing of the refused ones was kept.
    let list = app.send_as(&sa, "GET", "Subscription", None, &[]).await;
    assert_eq!(list.body["total"], 0, "{}", list.body);
    let st = app
        .send_as(&sa, "GET", "Subscription/nope/$status", None, &[])
        .await;
    assert_eq!(st.status, 404);
    // The catalogue says what is offered.
    let t = app
        .send_as(&sa, "GET", "Subscription/$topics", None, &[])
        .await;
    assert_eq!(t.body["total"], 3);
}

/// The queue is in the store: events numbered while the receiver was down are delivered by
/// the server that comes up on the same store after a restart, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_survives_a_restart_of_the_server() {
    use hutong_access::principal::{Kind, Principal, Scopes};
    let dir = hutong_store::testing::TempDir::new("subs-restart");
    let settings = || hutong_server::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        default_source: "urn:test:default".into(),
        link_interval: None,
        ..hutong_server::Settings::new(dir.0.display().to_string())
    };
    let system = Principal {
        kind: Kind::System,
        subject: format!("his@{A}"),
        name: None,
        institution: Some(A.into()),
        practitioner: None,
        person: None,
        roles: vec![],
        scopes: Scopes::parse("system/*.cruds"),
        booking: false,
    };
    async fn start(
        s: hutong_server::Settings,
        p: &Principal,
    ) -> (
        String,
        String,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let app = hutong_server::Application::build(s).await.unwrap();
        let base = format!("http://127.0.0.1:{}/fhir", app.port());
        let token = app.engine.access.tokens.issue_for(p, 3600);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let h = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        (base, token, stop, h)
    }
    let http = reqwest::Client::new();
    let post = |base: String, token: String, path: &str, v: Value| {
        let url = format!("{base}/{path}");
        let http = http.clone();
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .body(v.to_string())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };
    let rx = Receiver::default();
    let hook = rx.start().await;

    let (base, token, stop, server) = start(settings(), &system).await;
    let p = post(
        base.clone(),
        token.clone(),
        "Patient",
        json!({"resourceType": "Patient", "gender": "female", "birthDate": "1980-01-01"}),
    )
    .await;
    let patient = p["id"].as_str().unwrap().to_string();
    let filter = format!("Observation?subject=Patient/{patient}");
    let sub = post(
        base.clone(),
        token.clone(),
        "Subscription",
        backport(RECORD_CHANGED, &[&filter], &hook, "id-only"),
    )
    .await;
    let sub = sub["id"].as_str().unwrap().to_string();
    rx.until("the handshake", |r| !r.bundles().is_empty()).await;
    rx.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let o = post(
            base.clone(),
            token.clone(),
            "Observation",
            observation(&patient, "4548-4"),
        )
        .await;
        ids.push(o["id"].as_str().unwrap().to_string());
    }
    // Numbered (and failing) before the server goes.
    let mut numbered = false;
    for _ in 0..100 {
        let st: Value = http
            .get(format!("{base}/Subscription/{sub}/$status"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if st.to_string().contains("\"valueString\":\"3\"") {
            numbered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        numbered,
        "the three events were numbered before the restart"
    );
    let _ = stop.send(());
    let _ = server.await;

    rx.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let (_base, _token, stop, server) = start(settings(), &system).await;
    rx.until("the three events after the restart", |r| {
        r.events().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ev = rx.events();
    assert_eq!(
        ev.iter().map(|e| e.0).collect::<Vec<_>>(),
        [1, 2, 3],
        "{ev:?}"
    );
    for (e, id) in ev.iter().zip(&ids) {
        assert!(e
            .1
            .as_deref()
            .unwrap()
            .ends_with(&format!("/Observation/{id}")));
    }
    let _ = stop.send(());
    let _ = server.await;
}

/// `resident-district` (a GB/T 2260 code or a district's name) limits a subscription to the
/// residents whose home address is in the district: what a district platform subscribes to.
async fn district_filters_follow_the_residents_address(app: &TestApp) {
    let r: Region = region(app).await;
    let sa = app.system(A);
    let (here, elsewhere) = (Receiver::default(), Receiver::default());
    let (h1, h2) = (here.start().await, elsewhere.start().await);
    // The region's residents live in 西湖区 (330106).
    create_as(
        app,
        &sa,
        backport(
            RECORD_CHANGED,
            &["Observation?code=4548-4&resident-district=330106"],
            &h1,
            "id-only",
        ),
    )
    .await;
    create_as(
        app,
        &sa,
        backport(
            RECORD_CHANGED,
            &["Observation?resident-district=上城区"],
            &h2,
            "id-only",
        ),
    )
    .await;
    here.until("the handshake", |r| !r.bundles().is_empty())
        .await;
    elsewhere
        .until("the handshake", |r| !r.bundles().is_empty())
        .await;
    let o = create_as(app, &sa, observation(&r.pa, "4548-4")).await;
    here.until("the 西湖区 resident's result", |r| r.events().len() == 1)
        .await;
    assert!(here.events()[0]
        .1
        .as_deref()
        .unwrap()
        .ends_with(&format!("/Observation/{o}")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(elsewhere.events().is_empty(), "not a resident of 上城区");
}

/// With `backport-heartbeat-period`, a channel with nothing to say still hears from the
/// platform: a `heartbeat` notification (no events) each period.
async fn heartbeats_keep_a_quiet_channel_alive(app: &TestApp) {
    let _r: Region = region(app).await;
    let sa = app.system(A);
    let rx = Receiver::default();
    let hook = rx.start().await;
    let mut s = backport(
        RECORD_CHANGED,
        &["Observation?code=none-written"],
        &hook,
        "id-only",
    );
    s["channel"]["extension"] = json!([{"url": ig::HEARTBEAT, "valueUnsignedInt": 1}]);
    create_as(app, &sa, s).await;
    rx.until("two heartbeats", |r| {
        r.bundles()
            .iter()
            .filter(|b| kind(b) == "heartbeat")
            .count()
            >= 2
    })
    .await;
    let b = rx.bundles();
    assert_eq!(kind(&b[0]), "handshake");
    assert!(b.iter().all(|x| events_of(x).is_empty()));
}

/// A deletion is news to a filter on codes the deleted version met (and to no other).
async fn deletions_reach_filters_on_codes(app: &TestApp) {
    let r: Region = region(app).await;
    let sa = app.system(A);
    let rx = Receiver::default();
    let hook = rx.start().await;
    create_as(
        app,
        &sa,
        backport(
            RECORD_CHANGED,
            &["Observation?code=http://loinc.org|4548-4"],
            &hook,
            "full-resource",
        ),
    )
    .await;
    rx.until("the handshake", |r| !r.bundles().is_empty()).await;
    let hba1c = create_as(app, &sa, observation(&r.pa, "4548-4")).await;
    let glucose = create_as(app, &sa, observation(&r.pa, "2345-7")).await;
    rx.until("the creation", |r| r.events().len() == 1).await;
    for id in [&glucose, &hba1c] {
        let d = app
            .send_as(&sa, "DELETE", &format!("Observation/{id}"), None, &[])
            .await;
        assert_eq!(d.status, 200, "{}", d.body);
    }
    rx.until("the deletion", |r| r.events().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ev = rx.events();
    assert_eq!(ev.len(), 2, "{ev:?}");
    let last = rx
        .bundles()
        .into_iter()
        .rfind(|b| kind(b) == "event-notification")
        .unwrap();
    assert_eq!(last["entry"][1]["request"]["method"], "DELETE");
    assert_eq!(
        last["entry"][1]["request"]["url"],
        format!("Observation/{hba1c}")
    );
    assert!(
        last["entry"][1].get("resource").is_none(),
        "a deletion carries no resource"
    );
}

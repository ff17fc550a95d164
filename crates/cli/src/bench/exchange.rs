//! The subscriptions' figures (issue 28): events delivered over rest-hook on loopback while
//! an institution writes at a steady rate, their change-to-delivery latency, and what 100
//! active subscriptions cost the write path.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{client_with, median, settings, Report};
use hutong_server::Application;

const INSTITUTION: &str = "urn:hutong:org:91330100EXBENCH01";

/// What the receiver saw: per event its latency (ms, from the change's write to its
/// arrival), and how many POSTs.
#[derive(Default)]
struct Seen {
    /// Only acknowledge (a receiver elsewhere does its own parsing, not on this machine's
    /// cores): for the write-path figure.
    light: bool,
    latency: Vec<f64>,
    posts: u64,
    numbers: Vec<i64>,
    last: Option<Instant>,
}

async fn receiver(seen: Arc<Mutex<Seen>>) -> anyhow::Result<String> {
    async fn take(
        axum::extract::State(seen): axum::extract::State<Arc<Mutex<Seen>>>,
        body: axum::body::Bytes,
    ) -> &'static str {
        let now = hutong_fhir::date::now_ms();
        if seen.lock().unwrap_or_else(|e| e.into_inner()).light {
            return "";
        }
        let Ok(b) = serde_json::from_slice::<Value>(&body) else {
            return "";
        };
        let params = b["entry"][0]["resource"]["parameter"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
        s.posts += 1;
        for p in params.iter().filter(|p| p["name"] == "notification-event") {
            let part = |n: &str| {
                p["part"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|x| x["name"] == n)
                    .cloned()
                    .unwrap_or_default()
            };
            let ts = part("timestamp")["valueInstant"]
                .as_str()
                .and_then(hutong_fhir::date::parse)
                .map_or(now, |r| r.lo);
            s.latency.push((now - ts) as f64);
            s.numbers.push(
                part("event-number")["valueString"]
                    .as_str()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0),
            );
            s.last = Some(Instant::now());
        }
        ""
    }
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(take))
        .with_state(seen);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok(format!("http://127.0.0.1:{port}/hook"))
}

fn subscription(endpoint: &str, code: &str, max_count: u64) -> Value {
    use hutong_exchange::ig;
    json!({"resourceType": "Subscription", "status": "requested", "reason": "bench",
        "criteria": hutong_exchange::topic::RECORD_CHANGED,
        "_criteria": {"extension": [{"url": ig::FILTER_CRITERIA, "valueString": format!("Observation?code=http://loinc.org|{code}")}]},
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": ig::PAYLOAD_CONTENT, "valueCode": "id-only"}]},
            "extension": [{"url": ig::MAX_COUNT, "valuePositiveInt": max_count}]}})
}

fn observations(patient: &str, n: usize, code: &str) -> Vec<u8> {
    let entries: Vec<Value> = (0..n)
        .map(|i| {
            json!({"resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": format!("Patient/{patient}")},
                "effectiveDateTime": "2026-12-01T08:00:00+08:00",
                "valueQuantity": {"value": 5.0 + i as f64 / 100.0, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}},
                "request": {"method": "POST", "url": "Observation"}})
        })
        .collect();
    serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
        .unwrap_or_default()
}

struct Node {
    base: String,
    client: reqwest::Client,
    patient: String,
    engine: hutong_server::Engine,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn node(dir: &std::path::Path) -> anyhow::Result<Node> {
    node_with(dir, |_| {}).await
}

async fn node_with(
    dir: &std::path::Path,
    f: impl FnOnce(&mut hutong_server::Settings),
) -> anyhow::Result<Node> {
    let mut s = settings(dir.display().to_string());
    f(&mut s);
    let app = Application::build(s).await?;
    let engine = app.engine.clone();
    let base = format!("http://127.0.0.1:{}/fhir", app.port());
    let p = hutong_access::Principal {
        kind: hutong_access::Kind::System,
        subject: "ex-his".into(),
        name: None,
        institution: Some(INSTITUTION.into()),
        practitioner: None,
        person: None,
        roles: Vec::new(),
        scopes: hutong_access::Scopes::parse("system/*.cruds"),
        booking: false,
    };
    let token = app.engine.access.tokens.issue_for(&p, 6 * 3600);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let client = client_with(&token)?;
    let r: Value = client
        .post(format!("{base}/Patient"))
        .header("content-type", "application/fhir+json")
        .body(serde_json::to_vec(&json!({"resourceType": "Patient", "gender": "female", "birthDate": "1970-05-01", "name": [{"text": "订阅测试"}]}))?)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(Node {
        base,
        client,
        patient: r["id"].as_str().unwrap_or_default().to_string(),
        engine,
        stop,
        server,
    })
}

impl Node {
    async fn subscribe(&self, v: &Value) -> anyhow::Result<()> {
        self.client
            .post(format!("{}/Subscription", self.base))
            .header("content-type", "application/fhir+json")
            .body(serde_json::to_vec(v)?)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn post(&self, body: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .post(&self.base)
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// One delivery run: `rate` Observations a second for `secs`, one subscription matching
/// them all. Returns (events delivered per second, POSTs per second, latencies, written).
async fn delivery(
    dir: &std::path::Path,
    max_count: u64,
    rate: usize,
    secs: u64,
) -> anyhow::Result<(f64, f64, Vec<f64>, usize)> {
    let n = node(dir).await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let hook = receiver(seen.clone()).await?;
    n.subscribe(&subscription(&hook, "4548-4", max_count))
        .await?;
    // The handshake first.
    for _ in 0..200 {
        if seen.lock().unwrap_or_else(|e| e.into_inner()).posts > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Bundles of 50 every 50/rate seconds.
    let per = 50;
    let period = Duration::from_secs_f64(per as f64 / rate as f64);
    let total = rate * secs as usize / per;
    let body = observations(&n.patient, per, "4548-4");
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(period);
    let mut inflight = Vec::new();
    let node = Arc::new(n);
    for _ in 0..total {
        tick.tick().await;
        let (nd, b) = (node.clone(), body.clone());
        inflight.push(tokio::spawn(async move { nd.post(b).await }));
        inflight.retain(|h| !h.is_finished());
    }
    for h in inflight {
        h.await??;
    }
    let written = total * per;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = seen.lock().unwrap_or_else(|e| e.into_inner()).numbers.len();
        if got >= written || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    let span = s.last.map_or(1.0, |l| (l - t0).as_secs_f64());
    let mut nums = s.numbers.clone();
    nums.sort_unstable();
    nums.dedup();
    anyhow::ensure!(
        nums.len() == written && s.numbers.len() == written,
        "delivered {} events ({} distinct) of {written}",
        s.numbers.len(),
        nums.len()
    );
    if let Ok(n) = Arc::try_unwrap(node) {
        n.stop().await;
    }
    Ok((
        written as f64 / span,
        (s.posts - 1) as f64 / span,
        s.latency,
        written,
    ))
}

/// Resources a second the write path takes with `subs` active subscriptions (with
/// `matching`, one of them matches what is written; the others are on codes not written).
async fn ingest_with(
    dir: &std::path::Path,
    subs: usize,
    matching: bool,
    bundles: usize,
) -> anyhow::Result<f64> {
    let n = node(dir).await?;
    let seen = Arc::new(Mutex::new(Seen {
        light: true,
        ..Default::default()
    }));
    let hook = receiver(seen).await?;
    for i in 0..subs {
        let code = if i == 0 && matching {
            "4548-4".to_string()
        } else {
            format!("bench-{i}")
        };
        n.subscribe(&subscription(&hook, &code, 100)).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per = 100;
    let body = observations(&n.patient, per, "4548-4");
    let t0 = Instant::now();
    // Two writers, as the bundle figure.
    let node = Arc::new(n);
    let mut hs = Vec::new();
    for w in 0..2 {
        let nd = node.clone();
        let b = body.clone();
        hs.push(tokio::spawn(async move {
            for _ in (w..bundles).step_by(2) {
                nd.post(b.clone()).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for h in hs {
        h.await??;
    }
    let rate = (bundles * per) as f64 / t0.elapsed().as_secs_f64();
    if let Ok(n) = Arc::try_unwrap(node) {
        n.stop().await;
    }
    Ok(rate)
}

pub(super) fn figures(
    work: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    rep: &mut Report,
) -> anyhow::Result<()> {
    // One notification per event is a POST and an acknowledgement per change: measured at
    // a fifth of the rate; batched (the IG's max-count) at the full one.
    for (max_count, rate) in [(50u64, 5_000usize), (50, 5_500), (1, 1_000)] {
        let dir = work.join(format!("exchange-{max_count}"));
        let (events, posts, mut lat, written) = rt.block_on(delivery(&dir, max_count, rate, 10))?;
        let _ = std::fs::remove_dir_all(&dir);
        lat.sort_by(|a, b| a.total_cmp(b));
        let p50 = lat[lat.len() / 2];
        let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
        rep.row(
            &format!("Subscription events delivered over rest-hook, max-count {max_count}, {rate} changes/s for 10 s ({written} events; events/s, POSTs/s)"),
            format!("{events:.0} / {posts:.0}"),
            if max_count == 1 { "— (one POST per event, in order)" } else { "≥ 5,000" },
        );
        rep.row(
            &format!("Change-to-delivery latency, max-count {max_count}, at {rate} changes/s (ms, p50 / p99)"),
            format!("{p50:.0} / {p99:.0}"),
            "p99 ≤ 200",
        );
    }
    // The write path with none, with 100 active subscriptions none of which the load
    // matches (the matching alone), and with 100 of which one matches every change (every
    // change also delivered): alternating, median of 3.
    let mut rates: [Vec<f64>; 3] = Default::default();
    for k in 0..3 {
        for (c, (subs, matching)) in [(0usize, false), (100, false), (100, true)]
            .into_iter()
            .enumerate()
        {
            let dir = work.join(format!("exchange-ingest-{c}-{k}"));
            rates[c].push(rt.block_on(ingest_with(&dir, subs, matching, 200))?);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let [a, b, c] = rates.map(median);
    rep.row(
        "Transaction bundles (200×100 Observations, 2 clients) with 0 / 100 active subscriptions none matching / 100 with one matching every change (resources/s, median of 3, alternating)",
        format!("{a:.0} / {b:.0} ({:+.1} %) / {c:.0} ({:+.1} %)", (b - a) / a * 100.0, (c - a) / a * 100.0),
        "cost ≤ 10 %",
    );
    Ok(())
}

/// The upward forwarding figures: a city node forwarding to a province on this machine.
mod upward {
    use super::*;
    use hutong_exchange::node::{Node as NodeConf, Upstream};

    /// Prepares a province's store with the city's client; its secret.
    fn province_store(dir: &std::path::Path) -> anyhow::Result<String> {
        let loc = hutong_store::Location::Sqlite(dir.to_path_buf());
        let (store, keys) = hutong_server::open_store(&loc, None)?;
        let engine = hutong_server::engine_for(
            store,
            keys,
            hutong_server::EngineConfig {
                default_source: "urn:hutong:bench".into(),
                export_dir: dir.join("exports"),
                rules: Default::default(),
                pool: Default::default(),
            },
            "urn:hutong:platform",
            Default::default(),
        )?;
        let secret = engine
            .access
            .accounts
            .add_client(&hutong_access::accounts::Client {
                client_id: "bench-city".into(),
                kind: hutong_access::Kind::Platform,
                institution: None,
                name: "bench city node".into(),
                scopes: hutong_access::Scopes::parse("system/*.cruds"),
                booking: false,
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        engine.audit.flush(Duration::from_secs(10));
        Ok(secret)
    }

    /// Serves the province on `port`.
    async fn province(
        dir: &std::path::Path,
        port: u16,
    ) -> anyhow::Result<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )> {
        let mut s = settings(dir.display().to_string());
        s.listen = format!("127.0.0.1:{port}").parse()?;
        s.node = Some(NodeConf::new(
            "bench-province",
            "province",
            None,
            None,
            None,
        )?);
        let app = Application::build(s).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let h = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Ok((stop, h))
    }

    async fn city(dir: &std::path::Path, port: u16, secret: String) -> anyhow::Result<Node> {
        let conf = NodeConf::new(
            "bench-city",
            "city",
            None,
            Some(Upstream {
                url: format!("http://127.0.0.1:{port}/fhir"),
                secret,
            }),
            None,
        )?;
        node_with(dir, move |s| s.node = Some(conf)).await
    }

    fn backlog(n: &Node) -> i64 {
        n.engine
            .store
            .change_backlog(hutong_server::exchange::UPSTREAM_CONSUMER)
            .unwrap_or(-1)
    }

    /// Writes `bundles` bundles of 100 Observations with two clients; resources a second.
    async fn write(n: Arc<Node>, bundles: usize) -> anyhow::Result<f64> {
        let body = observations(&n.patient, 100, "4548-4");
        let t0 = Instant::now();
        let mut hs = Vec::new();
        for w in 0..2 {
            let (nd, b) = (n.clone(), body.clone());
            hs.push(tokio::spawn(async move {
                for _ in (w..bundles).step_by(2) {
                    nd.post(b.clone()).await?;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for h in hs {
            h.await??;
        }
        Ok((bundles * 100) as f64 / t0.elapsed().as_secs_f64())
    }

    /// Waits until the city's backlog is empty; how long it took.
    async fn drain(n: &Node, limit: Duration) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        while backlog(n) != 0 {
            anyhow::ensure!(
                t0.elapsed() < limit,
                "the backlog did not drain in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(t0.elapsed())
    }

    /// Steady ingest with the upstream up: the city's ingest rate with forwarding, the
    /// backlog sampled while it writes (largest, at the end) and the time to drain after.
    pub(super) async fn sustained(
        dir: &std::path::Path,
        bundles: usize,
    ) -> anyhow::Result<(f64, i64, i64, Duration)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let secret = province_store(&dir.join("province"))?;
        let (pstop, ph) = province(&dir.join("province"), port).await?;
        let n = Arc::new(city(&dir.join("city"), port, secret).await?);
        drain(&n, Duration::from_secs(60)).await?;
        let sampler = {
            let n = n.clone();
            tokio::spawn(async move {
                let mut most = 0;
                loop {
                    most = most.max(backlog(&n));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if Arc::strong_count(&n) == 2 {
                        return most;
                    }
                }
            })
        };
        let rate = write(n.clone(), bundles).await?;
        let at_end = backlog(&n);
        let most = {
            // The writer's handles are gone: the sampler sees its count fall and ends.
            tokio::time::sleep(Duration::from_millis(150)).await;
            sampler.await?
        };
        let drained = drain(&n, Duration::from_secs(300)).await?;
        if let Ok(n) = Arc::try_unwrap(n) {
            n.stop().await;
        }
        let _ = pstop.send(());
        let _ = ph.await;
        Ok((rate, most.max(at_end), at_end, drained))
    }

    /// A backlog of `resources` built while the province is down, then caught up: the
    /// time from the province's return to an empty backlog (including the forwarder's
    /// retry wait), and the rate it forwarded at.
    pub(super) async fn catch_up(
        dir: &std::path::Path,
        resources: usize,
    ) -> anyhow::Result<(Duration, f64)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let secret = province_store(&dir.join("province"))?;
        let n = Arc::new(city(&dir.join("city"), port, secret).await?);
        write(n.clone(), resources / 100).await?;
        let pending = backlog(&n);
        let t0 = Instant::now();
        let (pstop, ph) = province(&dir.join("province"), port).await?;
        // The first batch accepted marks the end of the retry wait.
        while backlog(&n) == pending {
            tokio::time::sleep(Duration::from_millis(20)).await;
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(120),
                "forwarding did not resume"
            );
        }
        let resumed = Instant::now();
        drain(&n, Duration::from_secs(900)).await?;
        let total = t0.elapsed();
        let rate = pending as f64 / resumed.elapsed().as_secs_f64();
        if let Ok(n) = Arc::try_unwrap(n) {
            n.stop().await;
        }
        let _ = pstop.send(());
        let _ = ph.await;
        Ok((total, rate))
    }
}

/// Upward forwarding (issue 28): it keeps up with the node's own ingest, and an hour's
/// backlog is caught up within five minutes.
pub(super) fn forwarding(
    work: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    rep: &mut Report,
) -> anyhow::Result<()> {
    let dir = work.join("forward-steady");
    let (rate, most, at_end, drained) = rt.block_on(upward::sustained(&dir, 300))?;
    let _ = std::fs::remove_dir_all(&dir);
    rep.row(
        "City node ingest while forwarding to its province (300×100 Observations, 2 clients; resources/s) — backlog largest / at the end of the writes (changes), drained after (s)",
        format!("{rate:.0} — {most} / {at_end}, {:.1} s", drained.as_secs_f64()),
        "no growing backlog",
    );
    // An hour of a city of Chongqing's size at its daytime peak: 14 billion records over
    // about ten years is ~160,000 an hour on average, ~2× that at the daytime peak.
    let hour = 360_000;
    let dir = work.join("forward-catch-up");
    let (took, fwd) = rt.block_on(upward::catch_up(&dir, hour))?;
    let _ = std::fs::remove_dir_all(&dir);
    rep.row(
        &format!("Catching up an hour's backlog ({hour} changes, the province down meanwhile): from its return to an empty backlog (s), forwarding rate (changes/s)"),
        format!("{:.0} s, {fwd:.0}/s", took.as_secs_f64()),
        "≤ 300 s",
    );
    Ok(())
}

//! `hutong demo --levels`: the platform hierarchy on one machine — a province node, a city
//! node holding the demo region, and two district nodes — so that a newcomer can watch
//! records move between levels: the region forwarded up to the province (its backlog
//! draining on the city's console), new records arriving at the city every second, pushed
//! down to the district of the resident they concern and forwarded up.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hutong_access::accounts::Client;
use hutong_access::{Kind, Principal, Scopes};
use hutong_exchange::node::{Node, Upstream};
use hutong_server::{Application, EngineConfig, Settings};
use hutong_store::Location;
use serde_json::{json, Value};

use crate::demo::{DemoArgs, DEMO_PASSWORD};

/// One node's store, opened, with its operators and the clients of the nodes below it.
struct Prepared {
    label: String,
    dir: std::path::PathBuf,
    store: hutong_store::Store,
    keys: Arc<std::sync::RwLock<hutong_access::Keyring>>,
    /// The secrets of the nodes below, by their id.
    below: Vec<(String, String)>,
}

fn prepare(
    dir: &Path,
    label: &str,
    below: &[&str],
    load: Option<(&hutong_synth::Summary, &Path, &Path)>,
) -> anyhow::Result<Prepared> {
    let (store, keys) = hutong_server::open_store(&Location::Sqlite(dir.to_path_buf()), None)
        .with_context(|| format!("opening {}", dir.display()))?;
    let engine = hutong_server::engine_for(
        store.clone(),
        keys.clone(),
        EngineConfig {
            default_source: "urn:hutong:demo".into(),
            export_dir: dir.join("exports"),
            rules: Default::default(),
            pool: Default::default(),
        },
        "urn:hutong:platform",
        Default::default(),
    )?;
    // The node with the region gets the demo's accounts (operators among them) with it.
    if load.is_none() {
        crate::demo::operators(&engine.access.accounts)?;
    }
    let mut secrets = Vec::new();
    for b in below {
        let s = engine.access.accounts.add_client(&Client {
            client_id: b.to_string(),
            kind: Kind::Platform,
            institution: None,
            name: format!("node {b}"),
            scopes: Scopes::parse("system/*.cruds"),
            booking: false,
        })?;
        secrets.push((b.to_string(), s));
    }
    if let Some((summary, region, out)) = load {
        crate::demo::load(&engine, summary, region)?;
        crate::demo::accounts(&engine, summary, out)?;
    }
    engine.audit.flush(Duration::from_secs(30));
    Ok(Prepared {
        label: label.into(),
        dir: dir.to_path_buf(),
        store,
        keys,
        below: secrets,
    })
}

fn secret_of(p: &Prepared, below: &str) -> String {
    p.below
        .iter()
        .find(|(id, _)| id == below)
        .map(|(_, s)| s.clone())
        .unwrap_or_default()
}

/// The residents the city holds (id, the institution that registered them, district).
fn residents(store: &hutong_store::Store) -> anyhow::Result<Vec<(String, String, String)>> {
    let q = store
        .parse_query(
            "Patient",
            &[("_count".to_string(), "2000".to_string())],
            true,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let page = store.search(&q, &hutong_store::Scope::All)?;
    Ok(page
        .matches
        .iter()
        .filter_map(|s| {
            let v = s.json().ok()?;
            let d = v["address"][0]["district"].as_str()?.to_string();
            Some((s.id.clone(), s.source.clone(), d))
        })
        .collect())
}

/// Every second a city institution sees one of its patients again: the Patient confirmed
/// (a new version) and a diagnosis recorded — forwarded up, and pushed down when the
/// resident lives in one of the two districts.
async fn trickle(
    city: hutong_server::Engine,
    base: String,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let token = city
        .access
        .tokens
        .issue_for(&Principal::platform("demo-trickle"), 24 * 3600);
    let http = reqwest::Client::new();
    let people = match tokio::task::spawn_blocking({
        let e = city.clone();
        move || residents(&e.store)
    })
    .await
    {
        Ok(Ok(p)) if !p.is_empty() => p,
        _ => return,
    };
    let codes = [
        ("I10", "原发性高血压"),
        ("E11.9", "2型糖尿病"),
        ("J06.9", "急性上呼吸道感染"),
    ];
    let mut i = 0usize;
    while !*stop.borrow() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (id, source, _) = &people[(i * 7919) % people.len()];
        let (code, display) = codes[i % codes.len()];
        i += 1;
        // The store is read on a blocking thread (as the server does).
        let (e, pid) = (city.clone(), id.clone());
        let read = tokio::task::spawn_blocking(move || {
            e.store.read("Patient", &pid, &hutong_store::Scope::All)
        })
        .await;
        let Ok(Ok(Some(cur))) = read.map(|r| r.map(|l| l.found())) else {
            continue;
        };
        let Ok(patient) = cur.json() else { continue };
        let send = |method: reqwest::Method, url: String, body: Value| {
            http.request(method, url)
                .bearer_auth(&token)
                .header("Content-Type", "application/fhir+json")
                .header("X-Hutong-Source", source.as_str())
                .json(&body)
                .send()
        };
        let _ = send(
            reqwest::Method::PUT,
            format!("{base}/Patient/{id}"),
            patient,
        )
        .await;
        let _ = send(
            reqwest::Method::POST,
            format!("{base}/Condition"),
            json!({"resourceType": "Condition",
                "subject": {"reference": format!("Patient/{id}")},
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code, "display": display}]},
                "recordedDate": hutong_fhir::date::format_instant(hutong_fhir::date::now_ms())[..10].to_string()}),
        )
        .await;
    }
}

/// Serves a prepared node until `stop` turns true: its root URL, engine and task.
async fn launch(
    p: Prepared,
    listen: std::net::SocketAddr,
    node: Node,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(
    String,
    hutong_server::Engine,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let s = Settings {
        listen,
        default_source: "urn:hutong:demo".into(),
        dev_outbox: true,
        node: Some(node),
        ..Settings::new(p.dir.display().to_string())
    };
    let app = Application::with_store(s, p.store, p.keys)
        .await?
        .with_routes(hutong_web::routes);
    let root = format!("http://{}:{}", listen.ip(), app.port());
    let engine = app.engine.clone();
    let h = tokio::spawn(app.run_until(async move {
        let _ = stop.changed().await;
    }));
    Ok((root, engine, h))
}

pub fn run(args: DemoArgs, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    crate::demo::fresh_dir(&args.dir)?;
    let (summary, region) = crate::demo::generate(&args)?;
    let levels = args.dir.join("levels");
    println!("Preparing four nodes: a province, a city holding the region, two districts…");
    let province = prepare(
        &levels.join("province"),
        "省级平台 province",
        &["city"],
        None,
    )?;
    let ids = ["district-1", "district-2"];
    let city = prepare(
        &levels.join("city"),
        "地市平台 city",
        &ids,
        Some((&summary, &region, &args.dir)),
    )?;
    // The two districts where most of the region's residents live.
    let districts: Vec<String> = {
        let mut n: std::collections::BTreeMap<String, usize> = Default::default();
        for (_, _, d) in residents(&city.store)? {
            *n.entry(d).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = n.into_iter().collect();
        v.sort_by_key(|d| std::cmp::Reverse(d.1));
        v.into_iter().take(2).map(|(d, _)| d).collect()
    };
    anyhow::ensure!(
        districts.len() == 2,
        "the demo region's residents live in fewer than two districts"
    );
    let lower: Vec<Prepared> = districts
        .iter()
        .zip(ids)
        .map(|(d, id)| {
            prepare(
                &levels.join(id),
                &format!("{d} 区县平台 district"),
                &[],
                None,
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let city_secret = secret_of(&province, "city");
    let port = args.listen.port();
    let at = move |k: u16| {
        let mut a = args.listen;
        a.set_port(if port == 0 { 0 } else { port + k });
        a
    };
    let up = |root: &str, secret: String| {
        Some(Upstream {
            url: format!("{root}/fhir"),
            secret,
        })
    };
    rt.block_on(async move {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut shown = Vec::new();
        let mut running = Vec::new();
        let label = province.label.clone();
        let (proot, _, h) = launch(
            province,
            at(0),
            Node::new("province", "province", None, None, None)?,
            stopped.clone(),
        )
        .await?;
        shown.push((label, proot.clone()));
        running.push(h);
        let (label, secrets) = (city.label.clone(), city.below.clone());
        let (croot, city_engine, h) = launch(
            city,
            at(1),
            Node::new("city", "city", None, up(&proot, city_secret), None)?,
            stopped.clone(),
        )
        .await?;
        shown.push((label, croot.clone()));
        running.push(h);
        for (k, ((p, id), district)) in lower.into_iter().zip(ids).zip(&districts).enumerate() {
            let secret = secrets
                .iter()
                .find(|(b, _)| b == id)
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            let label = p.label.clone();
            let (root, _, h) = launch(
                p,
                at(2 + k as u16),
                Node::new(id, "district", Some(district.clone()), up(&croot, secret), None)?,
                stopped.clone(),
            )
            .await?;
            shown.push((label, root));
            running.push(h);
        }
        tokio::spawn(trickle(city_engine, format!("{croot}/fhir"), stopped.clone()));
        println!();
        println!("The hierarchy is serving:");
        for (label, root) in &shown {
            println!("  {label:<24} {root}/fhir    console {root}/console/nodes");
        }
        println!();
        println!("Sign in to any console as quality (or admin), password {DEMO_PASSWORD}: 平台层级 shows");
        println!("the node's link upward — the city forwarding the region to the province, its backlog");
        println!("draining — and the nodes below it. Every second a city institution records a diagnosis:");
        println!("it goes up to the province and, for residents of the two districts, down to theirs.");
        println!(
            "The city's accounts (institutions, clinicians) are in {}.",
            args.dir.join("credentials.json").display()
        );
        println!("Press Ctrl-C to stop.");
        hutong_server::shutdown_signal().await;
        let _ = stop.send(true);
        for h in running {
            let _ = h.await;
        }
        Ok(())
    })
}

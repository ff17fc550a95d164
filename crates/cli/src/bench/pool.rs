//! The slot pool's figures (issue 27): `Appointment/$find` and `$book` latencies over a
//! region's worth of future slots, and many bookers racing for few slots.

use std::time::Instant;

use serde_json::{json, Value};

use super::{client_with, ms, p50_p99, postgres_admin, settings, ClientSide, Report};
use hutong_server::{Application, Settings};

/// Institutions, schedules per institution, and slots per schedule: 150,000 slots.
const INSTITUTIONS: usize = 25;
const SCHEDULES: usize = 30;
const SLOTS: usize = 200;

const DISTRICTS: [&str; 5] = ["上城区", "拱墅区", "西湖区", "滨江区", "萧山区"];
const SPECIALTIES: [&str; 8] = [
    "内科",
    "外科",
    "儿科",
    "妇产科",
    "全科医学科",
    "眼科",
    "口腔科",
    "皮肤科",
];

fn org_id(i: usize) -> String {
    format!("pool-org-{i:02}")
}

fn uscc(i: usize) -> String {
    format!("9133010{i:02}POOLBENCH")
}

fn at(ms: i64) -> String {
    hutong_fhir::date::format_instant(ms)
}

fn enc(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

/// A schedule of institution `i` and its slots, from `first` on: 20-minute slots through
/// the working day (08:00–17:00 Beijing time), over the coming weeks.
fn schedule_bundle(i: usize, s: usize, first_day: i64) -> Value {
    let sid = format!("pool-{i:02}-{s:02}");
    let mut entries = vec![
        json!({"resource": {"resourceType": "PractitionerRole", "id": format!("{sid}-role"), "active": true,
            "organization": {"reference": format!("Organization/{}", org_id(i))},
            "specialty": [{"text": SPECIALTIES[s % SPECIALTIES.len()]}]},
            "request": {"method": "PUT", "url": format!("PractitionerRole/{sid}-role")}}),
        json!({"resource": {"resourceType": "Schedule", "id": sid, "active": true,
            "specialty": [{"text": SPECIALTIES[s % SPECIALTIES.len()]}],
            "actor": [{"reference": format!("PractitionerRole/{sid}-role")}, {"reference": format!("Organization/{}", org_id(i))}]},
            "request": {"method": "PUT", "url": format!("Schedule/{sid}")}}),
    ];
    // Each schedule sits on a few days a week: 27 slots a day, from its own first day.
    let per_day = 27;
    for k in 0..SLOTS {
        let day = first_day + (s as i64 % 3) + (k / per_day) as i64 * 2;
        // 08:00 Beijing time is 00:00 UTC: the day's slots run 08:00–17:00 there.
        let start = day * 86_400_000 + (k % per_day) as i64 * 20 * 60_000;
        let id = format!("{sid}-{k:03}");
        entries.push(json!({"resource": {"resourceType": "Slot", "id": id,
            "schedule": {"reference": format!("Schedule/{sid}")}, "status": "free",
            "start": at(start), "end": at(start + 20 * 60_000)},
            "request": {"method": "PUT", "url": format!("Slot/{id}")}}));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// A server with the pool published, and the token of the hospital that books.
struct Pool {
    base: String,
    token: String,
    patient: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A fresh server with `institutions` hospitals, each publishing its schedules; the slots
/// published per second.
async fn start(s: Settings, institutions: usize) -> anyhow::Result<(Pool, f64)> {
    let app = Application::build(s).await?;
    let base = format!("http://127.0.0.1:{}/fhir", app.port());
    let platform = app
        .engine
        .access
        .tokens
        .issue_for(&hutong_access::Principal::platform("bench"), 6 * 3600);
    let hospital = hutong_access::Principal {
        kind: hutong_access::Kind::System,
        subject: "pool-his".into(),
        name: None,
        institution: Some(format!("urn:hutong:org:{}", uscc(0))),
        practitioner: None,
        person: None,
        roles: Vec::new(),
        scopes: hutong_access::Scopes::parse("system/*.cruds"),
        booking: false,
    };
    let token = app.engine.access.tokens.issue_for(&hospital, 6 * 3600);
    let publishers: Vec<String> = (0..institutions)
        .map(|i| {
            let inst = hutong_access::Principal {
                subject: format!("his-{i}"),
                institution: Some(format!("urn:hutong:org:{}", uscc(i))),
                ..hospital.clone()
            };
            app.engine.access.tokens.issue_for(&inst, 6 * 3600)
        })
        .collect();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let admin = client_with(&platform)?;
    for i in 0..institutions {
        let org = json!({"resourceType": "Organization", "id": org_id(i), "name": format!("医院{i}"),
            "identifier": [{"system": "https://hutong.dev/sid/uscc", "value": uscc(i)}],
            "type": [{"coding": [{"system": hutong_fhir::vocab::INSTITUTION_KIND_SYSTEM, "code": "tertiary-hospital"}]}],
            "address": [{"city": "杭州市", "district": DISTRICTS[i % DISTRICTS.len()]}]});
        admin
            .put(format!("{base}/Organization/{}", org_id(i)))
            .header("content-type", "application/fhir+json")
            .body(serde_json::to_vec(&org)?)
            .send()
            .await?
            .error_for_status()?;
    }
    let client = client_with(&token)?;
    let patient = json!({"resourceType": "Patient", "name": [{"text": "测试患者"}], "gender": "female", "birthDate": "1980-01-01"});
    let p: Value = client
        .post(format!("{base}/Patient"))
        .header("content-type", "application/fhir+json")
        .body(serde_json::to_vec(&patient)?)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let patient = p["id"].as_str().unwrap_or_default().to_string();
    let today = hutong_fhir::date::now_ms() / 86_400_000;
    let t0 = Instant::now();
    let mut published = 0;
    // Each institution publishes its own schedules.
    for (i, t) in publishers.iter().enumerate() {
        let c = client_with(t)?;
        for s in 0..SCHEDULES {
            let b = schedule_bundle(i, s, today + 3);
            c.post(&base)
                .header("content-type", "application/fhir+json")
                .body(serde_json::to_vec(&b)?)
                .send()
                .await?
                .error_for_status()?;
            published += SLOTS;
        }
    }
    let rate = published as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    Ok((
        Pool {
            base,
            token,
            patient,
            stop,
            server,
        },
        rate,
    ))
}

impl Pool {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

fn booking(slot: &str, patient: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"resourceType": "Parameters", "parameter": [{"name": "appointment-resource", "resource": {
        "resourceType": "Appointment", "status": "proposed", "slot": [{"reference": format!("Slot/{slot}")}],
        "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "needs-action"}]}}]}))
    .expect("serialise")
}

/// `runs` timed GETs of `url` (after a warm-up), p50 / p99 in ms.
async fn timed_gets(client: reqwest::Client, url: String, runs: usize) -> anyhow::Result<Vec<f64>> {
    for _ in 0..10 {
        client.get(&url).send().await?.bytes().await?;
    }
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let r = client.get(&url).send().await?;
        let status = r.status();
        r.bytes().await?;
        anyhow::ensure!(status.is_success(), "{url}: {status}");
        v.push(ms(t.elapsed()));
    }
    Ok(v)
}

/// Sixteen bookers race for the first 100 free slots, each trying every slot in its own
/// order: (appointments made, slots booked twice, refusals that were 409s, other answers).
async fn race(
    base: &str,
    token: &str,
    patient: &str,
    org: usize,
) -> anyhow::Result<(usize, usize, usize, usize)> {
    let client = client_with(token)?;
    let now = hutong_fhir::date::now_ms();
    let found: Value = client
        .get(format!(
            "{base}/Appointment/$find?start={}&end={}&_count=100&organization=Organization/{}",
            enc(&at(now)),
            enc(&at(now + 60 * 86_400_000)),
            org_id(org)
        ))
        .send()
        .await?
        .json()
        .await?;
    let slots: Vec<String> = found["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["slot"][0]["reference"].as_str())
        .map(|r| r.trim_start_matches("Slot/").to_string())
        .collect();
    anyhow::ensure!(slots.len() == 100, "{} free slots found", slots.len());
    let mut tasks = Vec::new();
    for b in 0..16usize {
        let client = client.clone();
        let url = format!("{base}/Appointment/$book");
        let mut order = slots.clone();
        // Every booker its own order, so that they collide everywhere, not in one queue.
        order.rotate_left(b * 7 % 100);
        if b % 2 == 1 {
            order.reverse();
        }
        let patient = patient.to_string();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for s in order {
                let r = client
                    .post(&url)
                    .header("content-type", "application/fhir+json")
                    .body(booking(&s, &patient))
                    .send()
                    .await?;
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                out.push((s, status, v["resourceType"] == "OperationOutcome"));
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut won = std::collections::HashMap::<String, usize>::new();
    let (mut refused, mut other) = (0, 0);
    for t in tasks {
        for (s, status, outcome) in t.await?? {
            match status {
                200 => *won.entry(s).or_default() += 1,
                409 if outcome => refused += 1,
                _ => other += 1,
            }
        }
    }
    let made = won.values().sum();
    let twice = won.values().filter(|n| **n > 1).count();
    Ok((made, twice, refused, other))
}

/// A patient of institution 0 with `n` results over three years (a third of them HbA1c,
/// creatinine and glucose, the rest other tests), then `runs` recognition checks of three
/// listed tests by the same institution: p50 / p99 ms.
async fn recognition(
    base: &str,
    token: &str,
    patient: &str,
    n: usize,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    let client = client_with(token)?;
    // Catalogued tests in the platform's units and plausible values (the intake rules
    // reject anything else).
    let codes = [
        ("4548-4", "%", 6.5),
        ("14682-9", "umol/L", 80.0),
        ("2345-7", "mmol/L", 6.0),
        ("718-7", "g/L", 135.0),
        ("6690-2", "10*9/L", 6.0),
        ("777-3", "10*9/L", 220.0),
        ("1742-6", "U/L", 25.0),
        ("14647-2", "mmol/L", 4.8),
        ("8480-6", "mm[Hg]", 128.0),
    ];
    let now = hutong_fhir::date::now_ms();
    let mut entries = Vec::new();
    for k in 0..n {
        let (code, unit, value) = codes[k % codes.len()];
        let t = now - (k as i64 * 1_093 / n as i64 + 1) * 86_400_000;
        entries.push(json!({"resource": {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": format!("Patient/{patient}")}, "effectiveDateTime": at(t),
            "valueQuantity": {"value": value + (k % 7) as f64 / 10.0, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}},
            "request": {"method": "POST", "url": "Observation"}}));
        if entries.len() == 500 || k + 1 == n {
            let b = json!({"resourceType": "Bundle", "type": "batch", "entry": std::mem::take(&mut entries)});
            let r: Value = client
                .post(base)
                .header("content-type", "application/fhir+json")
                .body(serde_json::to_vec(&b)?)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let refused = r["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| {
                    !e["response"]["status"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with('2')
                })
                .count();
            anyhow::ensure!(refused == 0, "{refused} results refused: {}", r["entry"][0]);
        }
    }
    let body = serde_json::to_vec(&json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}},
        {"name": "code", "valueCoding": {"system": "http://loinc.org", "code": "4548-4"}},
        {"name": "code", "valueCoding": {"system": "http://loinc.org", "code": "14682-9"}},
        {"name": "code", "valueCoding": {"system": "http://loinc.org", "code": "24627-2"}}]}))?;
    let url = format!("{base}/ServiceRequest/$check-recognition");
    let mut v = Vec::with_capacity(runs);
    for i in 0..runs + 10 {
        let t = Instant::now();
        let r = client
            .post(&url)
            .header("content-type", "application/fhir+json")
            .body(body.clone())
            .send()
            .await?;
        let status = r.status();
        let text = r.text().await?;
        anyhow::ensure!(status.is_success(), "{status} {text}");
        anyhow::ensure!(text.contains("recognizable"), "nothing recognized: {text}");
        if i >= 10 {
            v.push(ms(t.elapsed()));
        }
    }
    Ok(v)
}

pub(super) fn figures(
    work: &std::path::Path,
    postgres: Option<&str>,
    rt: &tokio::runtime::Runtime,
    rep: &mut Report,
) -> anyhow::Result<()> {
    let total = INSTITUTIONS * SCHEDULES * SLOTS;
    println!("Publishing a slot pool of {total} future slots…");
    let dir = work.join("pool");
    let (pool, rate) = rt.block_on(start(settings(dir.display().to_string()), INSTITUTIONS))?;
    rep.row(
        &format!("Slot pool: {total} future slots published in transaction bundles (Schedule + 200 Slots each), SQLite (slots/s)"),
        format!("{rate:.0}"),
        "reported",
    );
    let clients = ClientSide::start()?;
    let now = hutong_fhir::date::now_ms();
    let week = format!(
        "{}/Appointment/$find?start={}&end={}",
        pool.base,
        enc(&at(now)),
        enc(&at(now + 7 * 86_400_000))
    );
    let fortnight = format!(
        "{}/Appointment/$find?start={}&end={}&specialty=儿科&district=西湖区",
        pool.base,
        enc(&at(now)),
        enc(&at(now + 14 * 86_400_000))
    );
    let client = client_with(&pool.token)?;
    for (what, url) in [
        (
            "first available in the week, 20 a page",
            format!("{week}&_count=20"),
        ),
        ("first available, one", format!("{week}&_count=1")),
        ("by specialty and district in two weeks", fortnight),
        (
            "one institution's, page 3",
            format!(
                "{week}&organization=Organization/{}&_count=20&_offset=40",
                org_id(3)
            ),
        ),
    ] {
        let lat = rt.block_on(clients.run(timed_gets(client.clone(), url, 300)))?;
        rep.row(
            &format!(
                "Slot pool: Appointment/$find over {total} future slots, {what}, p50 / p99 (ms)"
            ),
            p50_p99(lat),
            "p50 ≤ 10 ms",
        );
    }
    // Sequential bookings of free slots, one after another (each finds nothing to wait for).
    let book = {
        let base = pool.base.clone();
        let patient = pool.patient.clone();
        let client = client.clone();
        rt.block_on(clients.run(async move {
            let mut lat = Vec::new();
            for k in 0..300 {
                let slot = format!(
                    "pool-{:02}-{:02}-{:03}",
                    k % INSTITUTIONS,
                    (k / INSTITUTIONS) % SCHEDULES,
                    1 + k % 150
                );
                let t = Instant::now();
                let r = client
                    .post(format!("{base}/Appointment/$book"))
                    .header("content-type", "application/fhir+json")
                    .body(booking(&slot, &patient))
                    .send()
                    .await?;
                let status = r.status();
                let body = r.text().await?;
                // Reserved slots (every fifth, before their release) are refused: only the
                // bookings made count.
                if status.is_success() {
                    lat.push(ms(t.elapsed()));
                } else {
                    anyhow::ensure!(status.as_u16() == 409, "{slot}: {status} {body}");
                }
            }
            Ok(lat)
        }))?
    };
    rep.row(
        &format!("Slot pool: Appointment/$book (Appointment written, slot taken, visit window opened), {} bookings, p50 / p99 (ms)", book.len()),
        p50_p99(book),
        "p50 ≤ 10 ms",
    );
    let (made, twice, refused, other) = {
        let (base, token, patient) = (pool.base.clone(), pool.token.clone(), pool.patient.clone());
        let t = Instant::now();
        let r = rt.block_on(
            clients.run(async move { race(&base, &token, &patient, INSTITUTIONS - 1).await }),
        )?;
        println!("  race on SQLite took {:.1}s", t.elapsed().as_secs_f64());
        r
    };
    rep.row(
        "Slot pool: 16 concurrent bookers on 100 slots, SQLite (appointments / slots booked twice / 409s / other answers)",
        format!("{made} / {twice} / {refused} / {other}"),
        "100 / 0 / 1,500 / 0",
    );
    let lat = {
        let (base, token, patient) = (pool.base.clone(), pool.token.clone(), pool.patient.clone());
        rt.block_on(
            clients.run(async move { recognition(&base, &token, &patient, 2_000, 300).await }),
        )?
    };
    rep.row(
        "Result recognition: ServiceRequest/$check-recognition of 3 tests for a patient with 2,000 results, p50 / p99 (ms)",
        p50_p99(lat),
        "p50 ≤ 10 ms",
    );
    rt.block_on(pool.stop());
    let _ = std::fs::remove_dir_all(&dir);

    if let Some(server) = postgres {
        let db = format!("hutong_bench_pool_{}", std::process::id());
        let mut c = postgres_admin(&format!("{server}/postgres"))?;
        c.batch_execute(&format!("CREATE DATABASE {db}"))?;
        let mut s = settings(format!("{server}/{db}"));
        s.keys_file = Some(work.join("pool-pg-keys.json"));
        let r = (|| -> anyhow::Result<_> {
            // A smaller pool: the race needs the slots, not the region.
            let (pool, _) = rt.block_on(start(s, 2))?;
            let (base, token, patient) =
                (pool.base.clone(), pool.token.clone(), pool.patient.clone());
            let r = rt.block_on(clients.run(async move { race(&base, &token, &patient, 1).await }));
            rt.block_on(pool.stop());
            r
        })();
        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        let (made, twice, refused, other) = r?;
        rep.row(
            "Slot pool: 16 concurrent bookers on 100 slots, PostgreSQL 15 (appointments / slots booked twice / 409s / other answers)",
            format!("{made} / {twice} / {refused} / {other}"),
            "100 / 0 / 1,500 / 0",
        );
    }
    Ok(())
}

/// Follow-up lists: `centres` primary-care centres with `per` contracted residents each,
/// every one with hypertension or diabetes and four follow-ups in the last year (some late),
/// loaded by bulk import; then every centre's list built, `runs` times. Seconds for all the
/// lists, median, and the residents listed.
pub(super) fn followup_figures(work: &std::path::Path, rep: &mut Report) -> anyhow::Result<()> {
    const CENTRES: usize = 20;
    const PER: usize = 5_000;
    let total = CENTRES * PER;
    println!("Loading {total} contracted residents with chronic conditions and follow-ups…");
    let dir = work.join("followups");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (store, keys) =
        hutong_server::open_store(&hutong_store::Location::Sqlite(dir.join("store")), None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
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
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = hutong_fhir::date::now_ms();
    let day = 86_400_000i64;
    let registry = dir.join("registry.ndjson");
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&registry)?);
        for c in 0..CENTRES {
            writeln!(
                w,
                "{}",
                json!({"resourceType": "Organization", "id": format!("fc-{c:02}"), "name": format!("社区卫生服务中心{c}"),
                "identifier": [{"system": "https://hutong.dev/sid/uscc", "value": format!("9133010{c:02}FOLLOWUP")}],
                "type": [{"coding": [{"system": hutong_fhir::vocab::INSTITUTION_KIND_SYSTEM, "code": "community-health-centre"}]}]})
            )?;
        }
    }
    let quiet = |_: u64, _: u64| {};
    hutong_server::engine::bulk::import(&engine, &[registry], "urn:hutong:registry", &quiet)?;
    for c in 0..CENTRES {
        let file = dir.join(format!("centre-{c:02}.ndjson"));
        {
            use std::io::Write;
            let mut w = std::io::BufWriter::new(std::fs::File::create(&file)?);
            for k in 0..PER {
                let pid = format!("fc{c:02}-{k:05}");
                // Distinct people, each with an ID number of their own: 100,000 look-alike
                // test records would otherwise be taken for fewer people.
                let (y, m, dd) = (
                    1940 + (k % 40) as u32,
                    1 + (k % 12) as u32,
                    1 + ((k / 12) % 28) as u32,
                );
                let seq = ((c * PER + k) % 999 + 1) as u32;
                let id = hutong_cn::idcard::make(330106, y, m, dd, seq);
                writeln!(
                    w,
                    "{}",
                    json!({"resourceType": "Patient", "id": pid,
                    "identifier": [{"system": hutong_fhir::vocab::ID_SYSTEM, "value": id}],
                    "name": [{"text": format!("居民{c}-{k}")}],
                    "gender": if seq.is_multiple_of(2) { "female" } else { "male" },
                    "birthDate": format!("{y}-{m:02}-{dd:02}")})
                )?;
                let (code, text) = if k % 3 == 0 {
                    ("E11.9", "2型糖尿病")
                } else {
                    ("I10", "原发性高血压")
                };
                writeln!(
                    w,
                    "{}",
                    json!({"resourceType": "Condition", "id": format!("{pid}-dx"), "subject": {"reference": format!("Patient/{pid}")},
                    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}], "text": text}})
                )?;
                let start = now - (10 + (k % 150) as i64) * day;
                writeln!(
                    w,
                    "{}",
                    json!({"resourceType": "EpisodeOfCare", "id": format!("{pid}-fd"), "status": "active",
                    "type": [{"coding": [{"system": hutong_fhir::vocab::CONTRACT_SYSTEM, "code": "hypertension"}]}],
                    "patient": {"reference": format!("Patient/{pid}")}, "managingOrganization": {"reference": format!("Organization/fc-{c:02}")},
                    "period": {"start": at(start), "end": at(start + 365 * day)}})
                )?;
                for v in 0..4 {
                    // Quarterly, the last one between a week and four months ago.
                    let t = now - ((7 + (k % 110)) as i64 + v * 90) * day;
                    writeln!(
                        w,
                        "{}",
                        json!({"resourceType": "Encounter", "id": format!("{pid}-fu{v}"), "status": "finished",
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                        "type": [{"coding": [{"system": hutong_fhir::vocab::ENCOUNTER_TYPE_SYSTEM, "code": hutong_fhir::vocab::FOLLOW_UP_CODE}]}],
                        "subject": {"reference": format!("Patient/{pid}")}, "period": {"start": at(t), "end": at(t + 1_800_000)}})
                    )?;
                }
            }
        }
        hutong_server::engine::bulk::import(
            &engine,
            &[file],
            &format!("urn:hutong:org:9133010{c:02}FOLLOWUP"),
            &quiet,
        )?;
    }
    engine.matcher.sync(&engine.store)?;
    let centres: Vec<String> = (0..CENTRES)
        .map(|c| format!("urn:hutong:org:9133010{c:02}FOLLOWUP"))
        .collect();
    let mut secs = Vec::new();
    let mut listed = 0;
    for _ in 0..3 {
        let t = Instant::now();
        listed = 0;
        for c in &centres {
            listed += hutong_server::coordination::contracts::worklist(
                &engine,
                c,
                hutong_fhir::date::now_ms(),
            )
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?
            .len();
        }
        secs.push(t.elapsed().as_secs_f64());
    }
    anyhow::ensure!(listed == total, "{listed} of {total} residents listed");
    secs.sort_by(|a, b| a.total_cmp(b));
    rep.row(
        &format!("Follow-up lists: every centre's list for {total} contracted residents with hypertension or diabetes ({CENTRES} centres, 4 follow-ups each), median of 3 (s)"),
        format!("{:.2}", secs[1]),
        "≤ 5 s",
    );
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

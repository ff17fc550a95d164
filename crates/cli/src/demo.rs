//! `hutong demo`: a synthetic region generated, loaded into a fresh embedded store and
//! served, with a printed guide of what to open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use hutong_access::accounts::{Client, User};
use hutong_access::principal::{Kind, Principal, Role, Scopes};
use hutong_server::{Application, Engine, EngineConfig, Settings};
use hutong_store::Location;

const MARKER: &str = ".hutong-demo";

#[derive(Args)]
pub struct DemoArgs {
    /// Residents in the demo region.
    #[arg(long, default_value_t = 2_000)]
    residents: u64,
    /// Institutions in the demo region.
    #[arg(long, default_value_t = 12)]
    institutions: usize,
    /// Years of history.
    #[arg(long, default_value_t = 3)]
    years: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Working directory for the region and its store; a previous demo there is replaced.
    #[arg(long, default_value = "hutong-demo")]
    pub(crate) dir: PathBuf,
    /// Address to serve on (port 0 picks a free port).
    #[arg(long, env = "HUTONG_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// Run a small hierarchy instead: a province node, a city node holding the region and
    /// two district nodes, on this port and the next three.
    #[arg(long)]
    pub(crate) levels: bool,
}

pub(crate) fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            anyhow::bail!(
                "{} holds files that are not a Hutong demo; choose another --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "A Hutong demo directory: `hutong demo` replaces it.\n",
    )?;
    Ok(())
}

pub(crate) fn load(
    engine: &Engine,
    summary: &hutong_synth::Summary,
    region: &Path,
) -> anyhow::Result<u64> {
    let mut batches = vec![(
        "urn:hutong:registry".to_string(),
        vec![region.join("registry")],
    )];
    for i in &summary.institutions {
        batches.push((i.source.clone(), vec![i.dir.clone()]));
    }
    let mut files = Vec::new();
    for (source, paths) in &batches {
        files.push((source, hutong_server::engine::bulk::collect_files(paths)?));
    }
    let total: u64 = files
        .iter()
        .flat_map(|(_, f)| f.iter())
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} loading [{elapsed_precise}] {bar:40} {msg}",
        )
        .expect("valid template"),
    );
    let t0 = Instant::now();
    let mut base = (0u64, 0u64);
    let mut rejected = 0;
    for (source, f) in files {
        let progress = |bytes: u64, n: u64| {
            bar.set_position(base.0 + bytes);
            let done = base.1 + n;
            let rate = done as f64 / t0.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{done} resources, {rate:.0}/s"));
        };
        let report = hutong_server::engine::bulk::import(engine, &f, source, &progress)?;
        base.0 += f
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum::<u64>();
        base.1 += report.loaded;
        rejected += report.rejected.len();
    }
    bar.finish_and_clear();
    println!(
        "Loaded {} resources in {:.1}s{}.",
        base.1,
        t0.elapsed().as_secs_f64(),
        if rejected > 0 {
            format!(
                " ({rejected} with the generator's injected defects rejected by the intake \
                 rules: see GET /fhir/$quarantine)"
            )
        } else {
            String::new()
        }
    );
    Ok(base.1)
}

/// The demo's password for every user it creates.
pub const DEMO_PASSWORD: &str = "hutong-demo";

/// The accounts the demo creates, written to `credentials.json` beside the store.
pub(crate) struct Credentials {
    pub(crate) platform: (String, String),
    pub(crate) institutions: Vec<(String, String, String, String)>,
}

/// Creates a platform client, a system client and a clinician for every institution, a
/// booking client for the appointment platform, and one operator per role.
pub(crate) fn accounts(
    engine: &Engine,
    summary: &hutong_synth::Summary,
    dir: &Path,
) -> anyhow::Result<Credentials> {
    let a = &engine.access.accounts;
    let platform = a.add_client(&Client {
        client_id: "demo-platform".into(),
        kind: Kind::Platform,
        institution: None,
        name: "Demo platform service".into(),
        scopes: Scopes::parse("system/*.cruds"),
        booking: false,
    })?;
    let booking = a.add_client(&Client {
        client_id: "appointments".into(),
        kind: Kind::System,
        institution: Some("urn:hutong:appointments".into()),
        name: "Regional appointment platform (号源池)".into(),
        scopes: Scopes::parse("system/Appointment.cruds system/Organization.rs system/Location.rs system/HealthcareService.rs system/PractitionerRole.rs"),
        booking: true,
    })?;
    let mut institutions = Vec::new();
    let mut json_inst = Vec::new();
    for i in &summary.institutions {
        let secret = a.add_client(&Client {
            client_id: i.code.clone(),
            kind: Kind::System,
            institution: Some(i.source.clone()),
            name: i.name.clone(),
            scopes: Scopes::parse("system/*.cruds"),
            booking: false,
        })?;
        // The generator's ids are `<code>-…`: reserved for the institution that uses them.
        a.claim_namespace(&format!("{}-", i.code), &i.source)?;
        let user = format!("doctor.{}", i.code);
        a.add_user(
            &User {
                username: user.clone(),
                kind: Kind::Clinician,
                name: format!("{}医生", i.name),
                institution: Some(i.source.clone()),
                practitioner: None,
                roles: Vec::new(),
            },
            DEMO_PASSWORD,
        )?;
        json_inst.push(serde_json::json!({"institution": i.name, "source": i.source,
            "client_id": i.code, "client_secret": secret, "clinician": user, "password": DEMO_PASSWORD}));
        institutions.push((i.name.clone(), i.code.clone(), secret, user));
    }
    let ops = operators(a)?;
    let doc = serde_json::json!({
        "note": "Demo accounts only. Secrets are shown here once; the store keeps their hashes.",
        "platform": {"client_id": "demo-platform", "client_secret": platform},
        "appointment_platform": {"client_id": "appointments", "client_secret": booking},
        "institutions": json_inst,
        "operators": ops,
        "residents": "sign in with a resident's phone: POST /auth/otp, then read the code at /dev/outbox?to=PHONE and POST /auth/otp/verify"
    });
    std::fs::write(
        dir.join("credentials.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    Ok(Credentials {
        platform: ("demo-platform".into(), platform),
        institutions,
    })
}

/// One operator per role, with the demo's password: their descriptions.
pub(crate) fn operators(a: &hutong_access::Accounts) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut ops = Vec::new();
    for (user, role) in [
        ("steward", Role::IdentitySteward),
        ("privacy", Role::PrivacyOfficer),
        ("auditor", Role::Auditor),
        ("quality", Role::QualityOfficer),
        ("admin", Role::Administrator),
    ] {
        a.add_user(
            &User {
                username: user.into(),
                kind: Kind::Operator,
                name: format!("平台{}", role.as_str()),
                institution: None,
                practitioner: None,
                roles: vec![role],
            },
            DEMO_PASSWORD,
        )?;
        ops.push(
            serde_json::json!({"username": user, "role": role.as_str(), "password": DEMO_PASSWORD}),
        );
    }
    Ok(ops)
}

/// A resident seen at the most institutions: ID number, name, phone, patient ids.
fn example(region: &Path) -> anyhow::Result<(String, String, String, Vec<String>)> {
    let persons = std::fs::read_to_string(region.join("truth/persons.csv"))?;
    let mut by_person: HashMap<&str, Vec<&str>> = HashMap::new();
    for l in persons.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        by_person.entry(f[2]).or_default().push(f[1]);
    }
    let residents = std::fs::read_to_string(region.join("truth/residents.csv"))?;
    let best = residents
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<&str>>())
        .max_by_key(|f| {
            (
                by_person.get(f[0]).map_or(0, Vec::len),
                std::cmp::Reverse(f[0].to_string()),
            )
        })
        .context("the region has no residents")?;
    let patients = by_person.get(best[0]).cloned().unwrap_or_default();
    Ok((
        best[1].to_string(),
        best[4].to_string(),
        best[5].to_string(),
        patients.into_iter().map(String::from).collect(),
    ))
}

/// Generates the demo's region into `args.dir/region`: its summary and directory.
pub(crate) fn generate(args: &DemoArgs) -> anyhow::Result<(hutong_synth::Summary, PathBuf)> {
    let region = args.dir.join("region");
    let today = {
        let (y, m, d) = hutong_fhir::date::today();
        hutong_fhir::date::days_from_civil(y, m, d) as i32
    };
    let cfg = hutong_synth::Config {
        residents: args.residents,
        institutions: args.institutions,
        years: args.years,
        seed: args.seed,
        // The region's history runs up to today, and its clinics' slots from today on, so
        // that contracts are in force, follow-ups fall due and the pool has slots to book.
        as_of: today,
        schedule_from: Some(today),
        ..hutong_synth::Config::default()
    };
    println!(
        "Generating a synthetic region: {} residents, {} institutions, {} years of records…",
        cfg.residents, cfg.institutions, cfg.years
    );
    let (summary, secs) = crate::synth::generate(&cfg, &region)?;
    println!(
        "Generated {} resources ({} institution patients) in {secs:.1}s.",
        summary.resources, summary.patients
    );
    Ok((summary, region))
}

pub fn run(args: DemoArgs, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    fresh_dir(&args.dir)?;
    let (summary, region) = generate(&args)?;
    let store_dir = args.dir.join("store");
    let (store, keys) = hutong_server::open_store(&Location::Sqlite(store_dir.clone()), None)
        .with_context(|| format!("opening {}", store_dir.display()))?;
    let engine = hutong_server::engine_for(
        store.clone(),
        keys.clone(),
        EngineConfig {
            default_source: "urn:hutong:demo".into(),
            export_dir: store_dir.join("exports"),
            rules: Default::default(),
            pool: Default::default(),
        },
        "urn:hutong:platform",
        Default::default(),
    )?;
    load(&engine, &summary, &region)?;
    let creds = accounts(&engine, &summary, &args.dir)?;
    engine.audit.flush(std::time::Duration::from_secs(30));
    drop(engine);
    let (name, id_number, _, patients) = example(&region)?;
    rt.block_on(async move {
        let settings = Settings {
            listen: args.listen,
            default_source: "urn:hutong:demo".into(),
            dev_outbox: true,
            ..Settings::new(store_dir.display().to_string())
        };
        let app = Application::with_store(settings, store, keys)
            .await?
            .with_routes(hutong_web::routes);
        eprintln!("Linking every institution's Patients to persons (one person, one record)…");
        let engine = app.engine.clone();
        let first = patients.first().map(|p| format!("Patient/{p}"));
        let (person, phone) = tokio::task::spawn_blocking(
            move || -> anyhow::Result<(Option<String>, String)> {
                engine.matcher.sync(&engine.store)?;
                // Each family-doctor contract gives its centre a standing authorization.
                let contracts = hutong_server::coordination::standing::sync_all(&engine)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
                eprintln!("{contracts} family-doctor contracts in force.");
                let referred = referrals(&engine)?;
                eprintln!("{referred} referrals made by family doctors.");
                let person = match first {
                    Some(p) => engine.matcher.person_of(&engine.store, &p)?,
                    None => None,
                };
                // The number the institutions have on record (a child's may be a guardian's).
                let phone = match &person {
                    Some(p) => engine
                        .store
                        .read("Person", p, &hutong_store::Scope::All)?
                        .found()
                        .and_then(|s| s.json().ok())
                        .and_then(|v| v["telecom"][0]["value"].as_str().map(String::from))
                        .unwrap_or_default(),
                    None => String::new(),
                };
                Ok((person, phone))
            },
        )
        .await??;
        let root = format!("http://{}:{}", args.listen.ip(), app.port());
        let base = format!("{root}/fhir");
        let token = app.engine.access.tokens.issue_for(
            &Principal::platform("demo-platform"),
            24 * 3600,
        );
        println!();
        println!("Hutong demo is serving FHIR R4 at {base}");
        println!();
        println!("Web portal for residents (居民端): {root}/portal/login");
        println!("  sign in as {name} with {phone}; the code is in the demo outbox: {root}/dev/outbox?to={phone}");
        println!("  (ID number {id_number}, if the phone is shared)");
        println!("Clinician workstation (医生调阅): {root}/workstation");
        println!("  sign in with a clinician account below (user name and password)");
        println!("Operations console (平台运营): {root}/console");
        println!("  sign in as steward, quality, auditor, privacy or admin, password {DEMO_PASSWORD}");
        println!();
        println!("Every request needs an access token. The demo's accounts (a platform service, each");
        println!("institution's system and clinician, operators) are in {}.", args.dir.join("credentials.json").display());
        println!("A platform token, valid 24 h, for the links below:");
        println!();
        println!("export TOKEN={token}");
        println!("curl -H \"Authorization: Bearer $TOKEN\" <link>");
        println!();
        println!("Sign in as:");
        println!("  a platform service   curl -u {}:{} -d grant_type=client_credentials {root}/auth/token", creds.platform.0, creds.platform.1);
        if let Some((iname, code, secret, user)) = creds.institutions.first() {
            println!("  {iname}'s HIS  curl -u {code}:{secret} -d grant_type=client_credentials {root}/auth/token");
            println!("  its clinician        curl -H 'Content-Type: application/json' -d '{{\"username\":\"{user}\",\"password\":\"{DEMO_PASSWORD}\"}}' {root}/auth/login");
        }
        println!("  an operator          the same with steward, privacy, auditor, quality or admin");
        println!("  {name} (resident)    curl -H 'Content-Type: application/json' -d '{{\"phone\":\"{phone}\"}}' {root}/auth/otp");
        println!("                       the code: {root}/dev/outbox?to={phone}");
        println!("                       then POST {{\"phone\":\"{phone}\",\"code\":\"…\",\"id_number\":\"{id_number}\"}} to {root}/auth/otp/verify");
        println!();
        println!("Try (with the token):");
        println!("  {base}/metadata");
        println!("  {base}/Organization                         the region's {} institutions", summary.institutions.len());
        println!("  {base}/Patient?name={name}                    namesakes across institutions");
        println!("  {base}/Patient?identifier={}|{id_number}", hutong_synth::ID_SYSTEM);
        println!("                                              {name}, as each institution registered them");
        if let Some(p) = patients.first() {
            println!("  {base}/Patient/{p}/$everything");
        }
        if let Some(person) = &person {
            println!("  {base}/Person/{person}/$everything");
            println!("                                              {name}'s one record, from every institution, in time order");
            println!("  {base}/Person/{person}/$summary");
            println!("  {base}/Patient/$ihe-pix?sourceIdentifier={}|{id_number}", hutong_synth::ID_SYSTEM);
            println!("  {base}/Person/{person}/$access-history");
            println!("                                              who viewed {name}'s record (the resident's own view)");
            println!();
            println!("Authorized access: as a clinician, POST {base}/Person/{person}/$request-access");
            println!("  (a Parameters body; the code goes to {name}'s phone: {root}/dev/outbox?to={phone}),");
            println!("  then POST the code to Consent/{{id}}/$verify-code; or $break-glass with a reason.");
        }
        println!("  {base}/AuditEvent?_count=20                 the audit trail (auditors); $verify proves it intact");
        println!("  {base}/Task?code={}|{}&status=requested", hutong_link::persons::IDENTITY_CS, hutong_link::persons::REVIEW_CODE);
        println!("                                              possible duplicates waiting for review");
        println!("  {base}/Observation?code=http://loinc.org|4548-4&_sort=-date&_count=10");
        println!("  {base}/Encounter?class=IMP&_include=Encounter:subject&_count=5");
        println!();
        println!("The region and its ground truth (residents, patient→person links, injected");
        println!("defects, per-day manifest) are in {}.", region.display());
        println!("Press Ctrl-C to stop.");
        app.run_until(hutong_server::shutdown_signal()).await?;
        Ok(())
    })
}

/// The engine's answer to `principal` (as the API would answer them).
fn ask(
    engine: &Engine,
    principal: &Principal,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> hutong_server::wire::Resp {
    let mut headers = HashMap::new();
    headers.insert("content-type".into(), "application/fhir+json".into());
    engine.handle(&hutong_server::wire::Req {
        method: method.into(),
        segments: path.split('/').map(String::from).collect(),
        headers,
        body: body.to_string().into_bytes(),
        base: "/fhir".into(),
        principal: std::sync::Arc::new(principal.clone()),
        ..Default::default()
    })
}

/// A few referrals, made as they are made: family doctors of the centres refer contracted
/// residents up to the first hospital, the residents approve in their app, and the hospital
/// accepts some — so that the referral boxes and the console have something to show.
fn referrals(engine: &Engine) -> anyhow::Result<usize> {
    let hospital = engine.store.query_admin(
        "SELECT org, source FROM co_qualified WHERE org LIKE 't%' ORDER BY org LIMIT 1",
        &[],
    )?;
    let Some(h) = hospital.first() else {
        return Ok(0);
    };
    let (org, hospital) = (h[0].text().to_string(), h[1].text().to_string());
    let contracts = engine.store.query_admin(
        "SELECT patient, institution FROM co_contract WHERE status = 'active' ORDER BY episode LIMIT 6",
        &[],
    )?;
    let staff = |kind: Kind, inst: &str| Principal {
        kind,
        subject: format!("demo-{}@{inst}", kind.as_str()),
        name: Some("家庭医生".into()),
        institution: Some(inst.to_string()),
        practitioner: None,
        person: None,
        roles: vec![],
        scopes: Scopes::parse(hutong_access::accounts::CLINICIAN_SCOPES),
        booking: false,
    };
    let mut made = 0;
    for (k, r) in contracts.iter().enumerate() {
        let (patient, centre) = (r[0].text(), r[1].text());
        let reason = [
            "血压控制不佳，请上级医院心内科调整用药",
            "血糖波动大，请内分泌科会诊",
            "发现肺部结节，请上级医院进一步检查",
        ][k % 3];
        let referred = ask(
            engine,
            &staff(Kind::Clinician, centre),
            "POST",
            "ServiceRequest/$refer",
            serde_json::json!({"resourceType": "Parameters", "parameter": [
                {"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}},
                {"name": "performer", "valueReference": {"reference": format!("Organization/{org}")}},
                {"name": "direction", "valueCode": "up"},
                {"name": "reason", "valueString": reason},
                {"name": "method", "valueCode": "app"}]}),
        );
        if referred.status != 201 {
            continue;
        }
        made += 1;
        let hutong_server::wire::Body::Json(t) = &referred.body else {
            continue;
        };
        let (task, consent) = (
            t["id"].as_str().unwrap_or("").to_string(),
            t["contained"][0]["id"].as_str().unwrap_or("").to_string(),
        );
        // Two in three residents approve at once; of those, the hospital takes half on.
        if k % 3 == 2 {
            continue;
        }
        let Some(person) = engine
            .matcher
            .person_of(&engine.store, &format!("Patient/{patient}"))?
        else {
            continue;
        };
        let resident = Principal {
            kind: Kind::Resident,
            subject: format!("resident:{person}"),
            person: Some(person),
            scopes: Scopes::parse("patient/*.rs"),
            ..staff(Kind::Resident, "")
        };
        let resident = Principal {
            institution: None,
            ..resident
        };
        ask(
            engine,
            &resident,
            "POST",
            &format!("Consent/{consent}/$approve"),
            serde_json::json!({"resourceType": "Parameters"}),
        );
        if k % 2 == 0 {
            ask(
                engine,
                &staff(Kind::System, &hospital),
                "POST",
                &format!("Task/{task}/$referral"),
                serde_json::json!({"resourceType": "Parameters", "parameter": [{"name": "action", "valueCode": "accept"}]}),
            );
        }
    }
    Ok(made)
}

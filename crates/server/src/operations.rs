//! Operations: `Patient/{id}/$everything` and FHIR Bulk Data `$export` (system, type and
//! patient level; asynchronous kick-off, status polling, NDJSON files).

use std::io::Write;
use std::path::PathBuf;

use hutong_fhir::date::{format_instant, now_ms};
use hutong_fhir::Definitions;
use hutong_store::sql::Val;
use serde_json::{json, Value};

use crate::consent::{break_glass, grants, trail};
use crate::engine::Engine;
use crate::error::ApiError;
use crate::error::Code;
use crate::guard::Guard;
use crate::identity as per;
use crate::wire::{Body, Req, Resp};
use hutong_access::principal::{Kind, Perms, Principal};

pub fn dispatch(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    let seg: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    match (req.method.as_str(), seg.as_slice()) {
        ("GET", ["Patient", id, "$everything"]) => engine.everything(req, g, id),
        ("POST", ["Patient", "$match"]) => patient_match(engine, req, g),
        ("GET", ["Patient", "$ihe-pix"]) => per::pix(engine, req, g),
        ("GET", ["Person", id, "$everything"]) => per::everything(engine, req, g, id),
        ("GET", ["Person", id, "$summary"]) => per::summary(engine, req, g, id),
        ("POST", ["Person", id, "$link"]) => per::link(engine, req, g, id),
        ("POST", ["Person", id, "$unlink"]) => per::unlink(engine, req, g, id),
        ("POST", ["Person", id, "$merge"]) => per::merge(engine, req, g, id),
        ("POST", ["Person", id, "$split"]) => per::split(engine, req, g, id),
        ("GET", ["Appointment", "$find"]) | ("POST", ["Appointment", "$find"]) => {
            crate::coordination::pool::find(engine, req, g)
        }
        ("POST", ["Appointment", "$hold"]) => crate::coordination::pool::hold(engine, req, g),
        ("POST", ["Appointment", "$book"]) => crate::coordination::pool::book(engine, req, g),
        ("POST", ["ServiceRequest", "$check-recognition"]) => {
            crate::coordination::recognition::check(engine, req, g)
        }
        ("POST", ["ServiceRequest", "$recognition-decision"]) => {
            crate::coordination::recognition::decision(engine, req, g)
        }
        ("GET", ["$recognition"]) => crate::coordination::recognition::stats(engine, req, g),
        ("POST", ["ServiceRequest", "$refer"]) => {
            crate::coordination::referral::refer(engine, req, g)
        }
        ("POST", ["Task", id, "$referral"]) => {
            crate::coordination::referral::act(engine, req, g, id)
        }
        ("GET", ["$referrals"]) => crate::coordination::referral::list(engine, req, g),
        ("POST", ["$referrals", "$sweep"]) => crate::coordination::referral::sweep_op(engine, g),
        ("POST", ["Person", id, "$sign-contract"]) => {
            crate::coordination::contracts::sign(engine, req, g, id)
        }
        ("POST", ["EpisodeOfCare", id, "$renew"]) => {
            crate::coordination::contracts::change(engine, req, g, id, true)
        }
        ("POST", ["EpisodeOfCare", id, "$end"]) => {
            crate::coordination::contracts::change(engine, req, g, id, false)
        }
        ("GET", ["$follow-ups"]) => crate::coordination::contracts::list(engine, req, g),
        ("POST", ["$follow-ups", "$push"]) => crate::coordination::contracts::push_op(engine, g),
        ("GET", ["Subscription", "$topics"]) => crate::exchange::ops::topics(g),
        ("GET", ["Subscription", "$status"]) => crate::exchange::ops::status(engine, req, g, None),
        ("GET", ["Subscription", id, "$status"]) => {
            crate::exchange::ops::status(engine, req, g, Some(id))
        }
        ("GET", ["Subscription", id, "$events"]) => {
            crate::exchange::ops::events(engine, req, g, id)
        }
        ("GET" | "POST", ["Subscription", "$get-ws-binding-token"]) => {
            crate::exchange::ops::ws_token(engine, req, g, None)
        }
        ("GET" | "POST", ["Subscription", id, "$get-ws-binding-token"]) => {
            crate::exchange::ops::ws_token(engine, req, g, Some(id))
        }
        ("GET", ["$node"]) => crate::exchange::links::status(engine, g),
        ("GET", ["Person", id, "$regional-record"]) => {
            crate::exchange::regional::ask(engine, req, g, id)
        }
        ("POST", ["Patient", "$regional-record"]) => {
            crate::exchange::regional::answer(engine, req, g)
        }
        ("GET", ["Patient", "$record-locator"]) => {
            crate::exchange::links::record_locator(engine, req, g)
        }
        ("GET", ["$coordination"]) => crate::coordination::stats::stats(engine, req, g),
        ("POST", ["Task", id, "$decide"]) => per::decide(engine, req, g, id),
        ("GET", ["Person", "$find"]) | ("POST", ["Person", "$find"]) => {
            grants::find(engine, req, g)
        }
        ("POST", ["Person", id, "$request-access"]) => grants::request_access(engine, req, g, id),
        ("POST", ["Person", id, "$break-glass"]) => break_glass::break_glass(engine, req, g, id),
        ("POST", ["Person", id, "$grant"]) => grants::standing_grant(engine, req, g, id),
        ("POST", ["Person", id, "$grant-proxy"]) => grants::grant_proxy(engine, req, g, id),
        ("GET", ["Person", id, "$access-history"]) => trail::access_history(engine, req, g, id),
        ("POST", ["Consent", id, "$verify-code"]) => grants::verify_code(engine, req, g, id),
        ("POST", ["Consent", id, "$approve"]) => grants::decide_request(engine, req, g, id, true),
        ("POST", ["Consent", id, "$deny"]) => grants::decide_request(engine, req, g, id, false),
        ("POST", ["Consent", id, "$revoke"]) => grants::revoke(engine, req, g, id),
        ("POST", ["Task", id, "$review"]) => break_glass::review(engine, req, g, id),
        ("POST", [t, id, "$restrict"]) => grants::restrict(engine, req, g, t, id, true),
        ("POST", [t, id, "$unrestrict"]) => grants::restrict(engine, req, g, t, id, false),
        ("POST", [t, "$validate"]) => crate::governance::quality::validate(engine, req, g, t),
        ("GET", ["$quarantine"]) => crate::governance::quality::list(engine, req, g),
        ("GET", ["$quarantine", q]) => crate::governance::quality::show(engine, g, q),
        ("GET", ["$quarantine", q, "body"]) => crate::governance::quality::body(engine, g, q),
        ("POST", ["$quarantine", q, "$resubmit"]) => {
            crate::governance::quality::resubmit(engine, req, g, q)
        }
        ("POST", ["$work-order"]) => crate::governance::workorders::report(engine, req, g),
        ("GET", ["$work-orders"]) => crate::governance::workorders::list(engine, req, g),
        ("POST", ["$work-orders", "$sweep"]) => crate::governance::workorders::sweep_op(engine, g),
        ("POST", ["Task", id, op])
            if hutong_quality::workorder::Action::parse(op.trim_start_matches('$')).is_some()
                && op.starts_with('$') =>
        {
            crate::governance::workorders::act(engine, req, g, id, op.trim_start_matches('$'))
        }
        ("POST", ["$reconcile"]) => crate::governance::reconcile::submit(engine, req, g),
        ("GET", ["$reconcile"]) => crate::governance::reconcile::list(engine, req, g),
        ("GET", ["$reconcile", id]) => crate::governance::reconcile::show(engine, g, id),
        ("GET", ["$scorecard"]) => crate::governance::scorecards::card(engine, req, g),
        ("GET", ["$intake"]) => crate::governance::throughput::op(engine, req, g),
        ("GET", ["$export"]) => kick_off(engine, req, g, ExportLevel::System),
        ("GET", ["Patient", "$export"]) => kick_off(engine, req, g, ExportLevel::Patient),
        ("GET", [t, "$export"]) => kick_off(engine, req, g, ExportLevel::Type(t.to_string())),
        ("GET", ["$export-status", job]) => status(engine, g, job),
        ("DELETE", ["$export-status", job]) => cancel(engine, g, job),
        ("GET", ["$export-file", job, name]) => file(engine, g, job, name),
        _ => Err(ApiError::of(
            Code::Unsupported,
            format!("Operation {} is not supported here", req.segments.join("/")),
        )),
    }
}

/// `Patient/$match` (FHIR R4): the input Patient's likely matches among the stored ones,
/// scored (posterior probability) and graded (`certain` / `probable` / `possible`).
fn patient_match(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("match");
    g.may("Patient", Perms::SEARCH)?;
    let body = crate::wire::parse_json(&req.body)?;
    if body["resourceType"] != "Parameters" {
        return Err(ApiError::bad_request("$match takes a Parameters resource")
            .with_expression("resourceType"));
    }
    let params = body["parameter"].as_array().cloned().unwrap_or_default();
    let find = |name: &str| params.iter().find(|p| p["name"] == name);
    let Some(patient) = find("resource").map(|p| &p["resource"]) else {
        return Err(
            ApiError::bad_request("$match needs a 'resource' parameter holding a Patient")
                .with_expression("Parameters.parameter"),
        );
    };
    if patient["resourceType"] != "Patient" {
        return Err(
            ApiError::bad_request("The 'resource' parameter of $match must be a Patient")
                .with_expression("Parameters.parameter.resource"),
        );
    }
    let count = match find("count").map(|p| &p["valueInteger"]) {
        None => 10,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=100) => n as usize,
            _ => {
                return Err(ApiError::bad_request(
                    "count must be an integer from 1 to 100",
                ))
            }
        },
    };
    let only_certain = find("onlyCertainMatches").is_some_and(|p| p["valueBoolean"] == true);
    let found = engine.matcher.matches(&engine.store, patient, count)?;
    let mut entries = Vec::new();
    for m in found {
        if only_certain && m.grade != hutong_mpi::index::Grade::Certain {
            continue;
        }
        let id = m.id.trim_start_matches("Patient/").to_string();
        // Matches outside the reader's authorization are not shown (nor counted).
        if let Some(stored) = engine
            .store
            .read("Patient", &id, &g.scope)?
            .found()
            .filter(|s| !s.deleted)
        {
            entries.push((id, m, stored));
        }
    }
    let mut w = crate::wire::BundleWriter::new("searchset", Some(entries.len() as u64), &[]);
    for (id, m, stored) in entries {
        w.entry(
            serde_json::json!({
                "fullUrl": format!("{}/Patient/{id}", req.base),
                "search": {
                    "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/match-grade", "valueCode": m.grade.as_str()}],
                    "mode": "match",
                    "score": (m.probability * 1e4).round() / 1e4
                }
            }),
            Some(g.release(&stored).as_ref()),
        );
    }
    let bytes = w.finish();
    Ok(Resp {
        status: 200,
        headers: Vec::new(),
        body: crate::wire::Body::Raw(bytes),
    })
}

enum ExportLevel {
    System,
    Patient,
    Type(String),
}

fn export_dir(engine: &Engine) -> PathBuf {
    engine.config.export_dir.clone()
}

/// What an export job records of who asked, so that the job reads as them and only they
/// can fetch its files.
#[derive(serde::Serialize, serde::Deserialize)]
struct JobRequest {
    url: String,
    principal: Principal,
    reason: Option<String>,
}

fn kick_off(engine: &Engine, req: &Req, g: &Guard, level: ExportLevel) -> Result<Resp, ApiError> {
    g.act("export");
    if !req
        .header("prefer")
        .is_some_and(|p| p.contains("respond-async"))
    {
        return Err(ApiError::bad_request(
            "$export is asynchronous: send 'Prefer: respond-async'",
        ));
    }
    let defs = Definitions::get();
    let mut types: Vec<String> = match &level {
        ExportLevel::System => defs.resource_types().to_vec(),
        ExportLevel::Patient => {
            let mut t: Vec<String> = defs.compartment_types().map(String::from).collect();
            t.push("Patient".into());
            t.sort();
            t.dedup();
            t
        }
        ExportLevel::Type(t) => {
            if !defs.is_resource_type(t) {
                return Err(ApiError::not_found(format!("Unknown resource type '{t}'")));
            }
            vec![t.clone()]
        }
    };
    let mut since = None;
    for (k, v) in &req.query {
        match k.as_str() {
            "_type" => {
                let wanted: Vec<&str> = v.split(',').collect();
                for w in &wanted {
                    if !defs.is_resource_type(w) {
                        return Err(ApiError::bad_request(format!(
                            "_type names an unknown type '{w}'"
                        )));
                    }
                }
                types.retain(|t| wanted.contains(&t.as_str()));
            }
            "_since" => {
                since = Some(
                    hutong_fhir::date::parse(v)
                        .ok_or_else(|| ApiError::bad_request(format!("Invalid _since '{v}'")))?
                        .lo,
                )
            }
            "_outputFormat"
                if !matches!(
                    v.as_str(),
                    "application/fhir+ndjson" | "application/ndjson" | "ndjson"
                ) =>
            {
                return Err(ApiError::bad_request(format!(
                    "Unsupported _outputFormat '{v}'"
                )));
            }
            _ => {}
        }
    }
    types.retain(|t| g.scope.allows_type(t) && g.principal.scopes.allows(t, Perms::READ));
    if types.is_empty() {
        return Err(ApiError::of(
            Code::Forbidden,
            "None of the requested types may be exported with this access token",
        ));
    }
    let job = uuid::Uuid::new_v4().to_string();
    // The request as made, parameters included: the manifest's `request` must say which
    // types and since when.
    let mut request_url = format!("{}/{}", req.base, req.segments.join("/"));
    if !req.query.is_empty() {
        request_url.push('?');
        request_url.push_str(&crate::wire::query_string(&req.query));
    }
    let now = now_ms();
    let record = JobRequest {
        url: request_url.clone(),
        principal: (*g.principal).clone(),
        reason: g.reason.clone(),
    };
    engine.store.exec_admin(
        "INSERT INTO jobs (id, kind, state, request, result, created, updated) VALUES (?, 'export', 'running', ?, '', ?, ?)",
        &[Val::Text(job.clone()), Val::Text(serde_json::to_string(&record).unwrap_or_default()), Val::Int(now), Val::Int(now)],
    )?;
    g.touch(format!("$export/{job}"), 0);
    let patients_only = matches!(level, ExportLevel::Patient);
    let e = engine.clone();
    let j = job.clone();
    let base = req.base.clone();
    std::thread::spawn(move || {
        // The job reads as the one who asked, with the grants in force when it runs.
        let g = Guard::new(
            &e,
            std::sync::Arc::new(record.principal),
            record.reason,
            None,
            format!("export job {j}: {request_url}"),
        );
        g.act("export");
        let result = run_export(
            &e,
            &g,
            &j,
            &types,
            since,
            patients_only,
            &base,
            &request_url,
            now,
        );
        g.finish(
            &e,
            if result.is_ok() { 200 } else { 500 },
            result.as_ref().err().cloned(),
        );
        let (state, text) = match result {
            Ok(manifest) => ("done", manifest.to_string()),
            Err(err) => {
                tracing::error!(job = %j, error = %err, "Export failed.");
                ("failed", err)
            }
        };
        let _ = e.store.exec_admin(
            "UPDATE jobs SET state = ?, result = ?, updated = ? WHERE id = ? AND state = 'running'",
            &[
                Val::Text(state.into()),
                Val::Text(text),
                Val::Int(now_ms()),
                Val::Text(j.clone()),
            ],
        );
    });
    Ok(Resp {
        status: 202,
        headers: vec![(
            "Content-Location".into(),
            format!("{}/$export-status/{job}", req.base),
        )],
        body: Body::Json(hutong_fhir::Outcome::info(format!("Export {job} started")).to_json()),
    })
}

#[allow(clippy::too_many_arguments)]
fn run_export(
    engine: &Engine,
    g: &Guard,
    job: &str,
    types: &[String],
    since: Option<i64>,
    patients_only: bool,
    base: &str,
    request_url: &str,
    started: i64,
) -> Result<Value, String> {
    let dir = export_dir(engine).join(job);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut output = Vec::new();
    for t in types {
        let mut after = 0;
        let mut count = 0u64;
        // Beside each file, per line, what the access decision needs to judge it again when
        // the file is fetched (shard, sensitivity, source, id): a grant revoked after the
        // export ran closes its lines.
        let mut file: Option<(
            std::io::BufWriter<std::fs::File>,
            std::io::BufWriter<std::fs::File>,
        )> = None;
        loop {
            let (batch, last) = engine
                .store
                .scan(t, since, patients_only, after, 1000, &g.scope)
                .map_err(|e| e.to_string())?;
            if batch.is_empty() {
                break;
            }
            let (f, k) = match &mut file {
                Some(f) => f,
                None => {
                    let f = std::fs::File::create(dir.join(format!("{t}.ndjson")))
                        .map_err(|e| e.to_string())?;
                    let k = std::fs::File::create(dir.join(format!("{t}.keys")))
                        .map_err(|e| e.to_string())?;
                    file.insert((std::io::BufWriter::new(f), std::io::BufWriter::new(k)))
                }
            };
            for s in &batch {
                f.write_all(&g.release(s))
                    .and_then(|_| f.write_all(b"\n"))
                    .and_then(|_| writeln!(k, "{}\t{}\t{}\t{}", s.shard, s.sens, s.source, s.id))
                    .map_err(|e| e.to_string())?;
                count += 1;
            }
            after = last;
        }
        if let Some((mut f, mut k)) = file {
            f.flush().map_err(|e| e.to_string())?;
            k.flush().map_err(|e| e.to_string())?;
            output.push(json!({"type": t, "url": format!("{base}/$export-file/{job}/{t}.ndjson"), "count": count}));
        }
    }
    Ok(json!({
        "transactionTime": format_instant(started),
        "request": request_url,
        "requiresAccessToken": true,
        "output": output,
        "error": []
    }))
}

/// The state and result of an export job, if the requester is the one who started it (or the
/// platform).
fn job_row(engine: &Engine, g: &Guard, job: &str) -> Result<(String, String), ApiError> {
    g.act("export");
    g.touch(format!("$export/{job}"), 0);
    let rows = engine.store.query_admin(
        "SELECT state, result, request FROM jobs WHERE id = ? AND kind = 'export'",
        &[Val::Text(job.into())],
    )?;
    let r = rows
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("No export job {job}")))?;
    let owner: Option<JobRequest> = serde_json::from_str(r[2].text()).ok();
    // The whole principal: two institutions' systems may well share a subject name.
    let mine = owner.is_some_and(|o| same_principal(&o.principal, &g.principal));
    if !mine && g.principal.kind != Kind::Platform {
        return Err(ApiError::not_found(format!("No export job {job}")));
    }
    Ok((r[0].text().to_string(), r[1].text().to_string()))
}

/// Whether two principals are the same requester (not merely the same subject name).
fn same_principal(a: &Principal, b: &Principal) -> bool {
    a.kind == b.kind
        && a.subject == b.subject
        && a.institution == b.institution
        && a.person == b.person
        && a.practitioner == b.practitioner
}

fn status(engine: &Engine, g: &Guard, job: &str) -> Result<Resp, ApiError> {
    let (state, result) = job_row(engine, g, job)?;
    match state.as_str() {
        "running" => Ok(Resp {
            status: 202,
            headers: vec![
                ("X-Progress".into(), "in progress".into()),
                ("Retry-After".into(), "1".into()),
            ],
            body: Body::Empty,
        }),
        // The Bulk Data manifest is plain JSON, not a FHIR resource.
        "done" => Ok(Resp::plain_json(
            200,
            serde_json::from_str(&result).unwrap_or(Value::Null),
        )),
        "cancelled" => Err(ApiError::not_found(format!("Export {job} was cancelled"))),
        _ => Err(ApiError::of(
            Code::Internal,
            format!("Export {job} failed: {result}"),
        )),
    }
}

fn cancel(engine: &Engine, g: &Guard, job: &str) -> Result<Resp, ApiError> {
    job_row(engine, g, job)?;
    engine.store.exec_admin(
        "UPDATE jobs SET state = 'cancelled' WHERE id = ?",
        &[Val::Text(job.into())],
    )?;
    let _ = std::fs::remove_dir_all(export_dir(engine).join(job));
    Ok(Resp {
        status: 202,
        headers: Vec::new(),
        body: Body::Empty,
    })
}

fn file(engine: &Engine, g: &Guard, job: &str, name: &str) -> Result<Resp, ApiError> {
    let (state, _) = job_row(engine, g, job)?;
    let t = name.strip_suffix(".ndjson").unwrap_or("");
    if state != "done" || !Definitions::get().is_resource_type(t) {
        return Err(ApiError::not_found(format!(
            "No file {name} in export {job}"
        )));
    }
    let dir = export_dir(engine).join(job);
    let missing = || ApiError::not_found(format!("No file {name} in export {job}"));
    let bytes = std::fs::read(dir.join(name)).map_err(|_| missing())?;
    let keys = std::fs::read_to_string(dir.join(format!("{t}.keys"))).map_err(|_| missing())?;
    // The decision is taken again now, line by line, with the grants in force: an export
    // does not outlive the authorization it was made under. Each line released is recorded.
    let mut out = Vec::with_capacity(bytes.len());
    let mut withheld = 0usize;
    for (line, key) in bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .zip(keys.lines())
    {
        let mut k = key.splitn(4, '\t');
        let shard: i64 = k.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        let sens: u32 = k.next().and_then(|x| x.parse().ok()).unwrap_or(u32::MAX);
        let source = k.next().unwrap_or("");
        let id = k.next().unwrap_or("");
        if g.scope.permits(t, shard, source, sens) {
            g.touch(format!("{t}/{id}"), shard);
            out.extend_from_slice(line);
            out.push(b'\n');
        } else {
            withheld += 1;
        }
    }
    if withheld > 0 {
        g.note(format!(
            "{withheld} line(s) of {name} withheld: no longer in the records the requester may read"
        ));
    }
    let bytes = out;
    Ok(Resp {
        status: 200,
        headers: vec![("Content-Type".into(), "application/fhir+ndjson".into())],
        body: Body::Raw(bytes),
    })
}

//! Family-doctor contracts (家庭医生签约) and the follow-up lists they bring (慢病随访).
//!
//! A contract is an `EpisodeOfCare` of the [`CONTRACT_SYSTEM`] type between a resident and a
//! primary-care centre (its family doctor team a `CareTeam`), for a year, with a service
//! package. Centres write them like any record (REST, bundles, import); a resident signs one
//! online (`Person/{id}/$sign-contract`); either side renews (`EpisodeOfCare/{id}/$renew`)
//! or ends it (`$end`). While a contract is active its centre holds a standing grant
//! ([`super::standing`]).
//!
//! `GET $follow-ups` is the centre's follow-up worklist, computed by the platform from the
//! contracts, the hypertension and diabetes diagnoses and the follow-up encounters of every
//! institution (indexed by the write path): overdue, due this week, done; with each team's
//! completion rate (four follow-ups in the last twelve months).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use hutong_access::principal::Kind;
use hutong_coordination::followup::{standing, Chronic, Due};
use hutong_fhir::date::{format_instant, now_ms};
use hutong_fhir::vocab::CONTRACT_SYSTEM;
use hutong_store::sql::Val;
use hutong_store::Scope;
use serde_json::{json, Value};

use super::index::is_primary_care;
use crate::engine::write::Submission;
use crate::engine::Engine;
use crate::error::{ApiError, Code};
use crate::guard::Guard;
use crate::wire::{Paging, Params, Req, Resp};

const YEAR: i64 = 365 * 86_400_000;

/// The code of the daily follow-up Task a centre is sent (what the `follow-up-due`
/// subscription topic fires on).
pub const FOLLOW_UP_LIST: &str = "follow-up-list";

/// Patients looked up per statement.
const CHUNK: usize = 500;

/// The service packages a contract may name (基础包 and the disease packages).
const PACKAGES: &[(&str, &str)] = &[
    ("basic", "基础服务包"),
    ("hypertension", "高血压个性化服务包"),
    ("diabetes", "糖尿病个性化服务包"),
    ("elderly", "老年人服务包"),
    ("maternal-child", "孕产妇及儿童服务包"),
];

fn contract_json(
    patient: &str,
    org: &str,
    org_name: &str,
    team: Option<&str>,
    package: &str,
    start: i64,
) -> Value {
    let zh = PACKAGES
        .iter()
        .find(|p| p.0 == package)
        .map_or(package, |p| p.1);
    let mut v = json!({
        "resourceType": "EpisodeOfCare",
        "status": "active",
        "type": [{"coding": [{"system": CONTRACT_SYSTEM, "code": package, "display": zh}], "text": format!("家庭医生签约：{zh}")}],
        "patient": {"reference": format!("Patient/{patient}")},
        "managingOrganization": {"reference": format!("Organization/{org}"), "display": org_name},
        "period": {"start": format_instant(start), "end": format_instant(start + YEAR)}
    });
    if let Some(t) = team {
        v["team"] = json!([{"reference": format!("CareTeam/{t}")}]);
    }
    v
}

/// `Person/{id}/$sign-contract`: the resident (or their proxy) signs a contract with a
/// primary-care centre online, for a year.
pub(crate) fn sign(engine: &Engine, req: &Req, g: &Guard, person: &str) -> Result<Resp, ApiError> {
    g.act("sign-contract");
    if !crate::consent::acts_for(engine, g, person) {
        return Err(ApiError::of(Code::Forbidden, "A resident (or their proxy) signs their own contract; a centre records the ones signed there as EpisodeOfCare"));
    }
    let p = Params::parse(req, "$sign-contract")?;
    let [org] = p.refs("organization", "Organization")?.try_into().map_err(|_| {
        ApiError::of(Code::Required, "$sign-contract needs the 'organization': the community health centre or township clinic (Organization/id)")
            .with_expression("Parameters.parameter.where(name='organization')")
    })?;
    let team = p.refs("team", "CareTeam")?.pop();
    let package = p.string("package").unwrap_or_else(|| "basic".into());
    if !PACKAGES.iter().any(|x| x.0 == package) {
        return Err(ApiError::of(
            Code::Value,
            format!(
                "package is one of {}, not '{package}'",
                PACKAGES.iter().map(|x| x.0).collect::<Vec<_>>().join(", ")
            ),
        )
        .with_expression("Parameters.parameter.where(name='package')"));
    }
    let o = engine
        .store
        .read("Organization", &org, &Scope::All)?
        .found()
        .filter(|s| !s.deleted)
        .ok_or_else(|| ApiError::not_found(format!("Organization/{org} is not known")))?
        .json()?;
    let inst = crate::consent::institution_of_org(&o).ok_or_else(|| {
        ApiError::of(
            Code::Unprocessable,
            format!("Organization/{org} has no unified social credit code"),
        )
    })?;
    if !is_primary_care(engine, &inst)? {
        return Err(ApiError::of(Code::Unprocessable, format!("Organization/{org} is not a primary-care centre: family doctors are at community health centres and township clinics")));
    }
    let patients = crate::consent::patients_of(engine, person)?;
    // Already signed there: one active contract per resident and centre.
    let open: Vec<String> = patients.iter().flat_map(|pt| {
        engine.store.query_admin("SELECT episode FROM co_contract WHERE patient = ? AND institution = ? AND status = 'active'", &[Val::Text(pt.clone()), Val::Text(inst.clone())])
            .unwrap_or_default().iter().map(|r| r[0].text().to_string()).collect::<Vec<_>>()
    }).collect();
    if let Some(e) = open.first() {
        return Err(ApiError::of(Code::Conflict, format!("You already have a contract with this centre (EpisodeOfCare/{e}): renew it instead")));
    }
    // Filed under the centre's own record of the resident when it has one.
    let mut patient = patients.first().cloned().ok_or_else(|| {
        ApiError::of(
            Code::Unprocessable,
            format!("Person/{person} has no records"),
        )
    })?;
    for pt in &patients {
        if let Some(s) = engine.store.read("Patient", pt, &Scope::All)?.found() {
            if s.source == inst {
                patient = pt.clone();
                break;
            }
        }
    }
    let now = now_ms();
    let mut v = contract_json(
        &patient,
        &org,
        o["name"].as_str().unwrap_or(""),
        team.as_deref(),
        &package,
        now,
    );
    engine.intake(&mut v, &inst, now);
    let pg = Guard::platform(engine, "contracts", "sign-contract");
    pg.on_behalf_of(person);
    pg.note(format!("signed online by {}", g.principal.label()));
    let sub = Submission {
        findings: &[],
        fingerprint: "",
    };
    let s = pg.write(engine, |tx| {
        Ok(engine
            .create_in(
                tx,
                &pg,
                &inst,
                "EpisodeOfCare",
                None,
                Cow::Borrowed(&v),
                None,
                &sub,
                None,
            )?
            .0)
    });
    pg.finish(engine, if s.is_ok() { 201 } else { 409 }, None);
    let s = s?;
    super::standing::sync(engine, &s.id, &g.principal.label())?;
    let mut r = Resp::json(
        201,
        serde_json::from_slice(&g.release(&s))
            .map_err(|e| ApiError::of(Code::Internal, e.to_string()))?,
    );
    r.headers.push((
        "Location".into(),
        format!("{}/EpisodeOfCare/{}", req.base, s.id),
    ));
    Ok(r)
}

/// `EpisodeOfCare/{id}/$renew` and `$end`: the resident (or proxy) or the centre.
pub(crate) fn change(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    id: &str,
    renew: bool,
) -> Result<Resp, ApiError> {
    g.act(if renew {
        "renew-contract"
    } else {
        "end-contract"
    });
    let rows = engine.store.query_admin(
        "SELECT patient, institution, status FROM co_contract WHERE episode = ?",
        &[Val::Text(id.into())],
    )?;
    let Some(r) = rows.first() else {
        return Err(ApiError::not_found(format!(
            "EpisodeOfCare/{id} is not a family-doctor contract"
        )));
    };
    let (patient, inst) = (r[0].text().to_string(), r[1].text().to_string());
    let person = engine
        .matcher
        .person_of(&engine.store, &format!("Patient/{patient}"))?;
    let party = g.principal.kind == Kind::Platform
        || (matches!(g.principal.kind, Kind::Clinician | Kind::System)
            && g.principal.institution.as_deref() == Some(inst.as_str()))
        || person
            .as_deref()
            .is_some_and(|p| crate::consent::acts_for(engine, g, p));
    if !party {
        return Err(ApiError::not_found(format!(
            "EpisodeOfCare/{id} is not a contract of yours"
        )));
    }
    if r[2].text() != "active" {
        return Err(ApiError::of(
            Code::Conflict,
            format!(
                "EpisodeOfCare/{id} is {}: only an active contract is renewed or ended",
                r[2].text()
            ),
        ));
    }
    let reason = if renew {
        None
    } else {
        let p = Params::parse(req, "$end")?;
        Some(p.required("reason", "$end")?)
    };
    let cur = engine
        .store
        .read("EpisodeOfCare", id, &Scope::All)?
        .found()
        .filter(|s| !s.deleted)
        .ok_or_else(|| ApiError::not_found(format!("EpisodeOfCare/{id} is not known")))?;
    let mut v = cur.json()?;
    let now = now_ms();
    if renew {
        let end = v["period"]["end"]
            .as_str()
            .and_then(hutong_fhir::date::parse)
            .map_or(now, |r| r.hi.max(now));
        v["period"]["end"] = json!(format_instant(end + YEAR));
    } else {
        v["status"] = json!("finished");
        v["period"]["end"] = json!(format_instant(now));
        let mut notes = v["extension"].as_array().cloned().unwrap_or_default();
        notes.push(json!({"url": "https://hutong.dev/fhir/StructureDefinition/contract-end-reason", "valueString": reason.clone().unwrap_or_default()}));
        v["extension"] = json!(notes);
    }
    let pg = Guard::platform(
        engine,
        "contracts",
        if renew {
            "renew-contract"
        } else {
            "end-contract"
        },
    );
    if let Some(p) = &person {
        pg.on_behalf_of(p);
    }
    pg.note(format!("EpisodeOfCare/{id} by {}", g.principal.label()));
    let sub = Submission {
        findings: &[],
        fingerprint: "",
    };
    let s = pg.write(engine, |tx| {
        Ok(engine
            .update_in(
                tx,
                &pg,
                &inst,
                "EpisodeOfCare",
                id,
                v.clone(),
                &sub,
                Some(cur.version),
            )?
            .0)
    });
    pg.finish(engine, if s.is_ok() { 200 } else { 409 }, None);
    let s = s?;
    super::standing::sync(engine, id, &g.principal.label())?;
    Ok(Resp::json(
        200,
        serde_json::from_slice(&g.release(&s))
            .map_err(|e| ApiError::of(Code::Internal, e.to_string()))?,
    ))
}

/// One resident on a centre's list.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `EpisodeOfCare/{id}` (the contract) or `Task/{id}` (a downward referral).
    pub episode: String,
    pub patient: String,
    pub team: String,
    pub conditions: BTreeSet<Chronic>,
    pub last: Option<i64>,
    pub standing: hutong_coordination::followup::Standing,
}

/// The follow-up list of `institution` at `now`: its active contracts whose residents have
/// hypertension or diabetes (diagnosed at any institution), each with their follow-ups at
/// any institution.
pub fn worklist(engine: &Engine, institution: &str, now: i64) -> Result<Vec<Entry>, ApiError> {
    let contracts = engine.store.query_admin(
        "SELECT episode, patient, team, start_ms FROM co_contract WHERE institution = ? AND status = 'active'",
        &[Val::Text(institution.into())],
    )?;
    // Residents referred down to the centre (accepted, scheduled or seen there in the last
    // year) are its to follow up too, contracted or not.
    let referred = engine.store.query_admin(
        "SELECT task, patient, '', opened FROM co_referral WHERE receiver = ? AND direction = 'down' \
         AND state IN ('accepted', 'scheduled', 'completed') AND opened >= ?",
        &[Val::Text(institution.into()), Val::Int(now - YEAR)],
    )?;
    engine.matcher.sync(&engine.store)?;
    // Each contract's person's Patients at every institution, asked for all at once.
    let rows: Vec<(&hutong_store::sql::Row, &str)> = contracts
        .iter()
        .map(|r| (r, "EpisodeOfCare"))
        .chain(referred.iter().map(|r| (r, "Task")))
        .collect();
    let ids: Vec<String> = rows.iter().map(|(r, _)| r[1].text().to_string()).collect();
    let people = engine.matcher.people_of(&engine.store, &ids)?;
    let mut seen_people = std::collections::HashSet::new();
    let mut listed: Vec<(String, String, String, i64, Vec<String>)> =
        Vec::with_capacity(rows.len());
    let mut wanted: std::collections::HashSet<String> = std::collections::HashSet::new();
    for ((r, via), person) in rows.iter().zip(people) {
        let patient = r[1].text().to_string();
        // A resident both contracted and referred down is listed once, by the contract.
        let all = match person {
            Some((p, _)) if !seen_people.insert(p.clone()) => continue,
            Some((_, all)) if !all.is_empty() => all,
            _ => vec![patient.clone()],
        };
        wanted.extend(all.iter().cloned());
        listed.push((
            format!("{via}/{}", r[0].text()),
            patient,
            r[2].text().to_string(),
            r[3].int(),
            all,
        ));
    }
    let people = listed;
    // The diagnoses and follow-ups of those Patients, by the Patient indexes a few hundred
    // at a time (not a query per resident, nor a pass over every centre's residents).
    let wanted: Vec<String> = wanted.into_iter().collect();
    let mut chronic: HashMap<String, BTreeSet<Chronic>> = HashMap::new();
    let mut visits: HashMap<String, Vec<i64>> = HashMap::new();
    for chunk in wanted.chunks(CHUNK) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let ids: Vec<Val> = chunk.iter().map(|p| Val::Text(p.clone())).collect();
        for r in engine.store.query_admin(
            &format!("SELECT patient, kind FROM co_chronic WHERE patient IN ({marks})"),
            &ids,
        )? {
            let k = if r[1].text() == "diabetes" {
                Chronic::Diabetes
            } else {
                Chronic::Hypertension
            };
            chronic
                .entry(r[0].text().to_string())
                .or_default()
                .insert(k);
        }
        let mut with_since = ids.clone();
        with_since.push(Val::Int(now - 2 * YEAR));
        for r in engine.store.query_admin(
            &format!("SELECT patient, at FROM co_visit WHERE patient IN ({marks}) AND at >= ?"),
            &with_since,
        )? {
            visits
                .entry(r[0].text().to_string())
                .or_default()
                .push(r[1].int());
        }
    }
    let mut out = Vec::new();
    for (episode, patient, team, start, all) in people {
        let conditions: BTreeSet<Chronic> = all
            .iter()
            .filter_map(|p| chronic.get(p))
            .flatten()
            .copied()
            .collect();
        if conditions.is_empty() {
            continue;
        }
        let v: Vec<i64> = all
            .iter()
            .filter_map(|p| visits.get(p))
            .flatten()
            .copied()
            .collect();
        let last = v.iter().copied().filter(|x| *x <= now).max();
        out.push(Entry {
            episode,
            patient,
            team,
            conditions,
            last,
            standing: standing(&v, start, now),
        });
    }
    out.sort_by(|a, b| {
        a.standing
            .status
            .cmp(&b.standing.status)
            .then(a.standing.due.cmp(&b.standing.due))
            .then(a.episode.cmp(&b.episode))
    });
    Ok(out)
}

/// `GET $follow-ups`: the caller's centre's list (`status`, `team` filter it; `format=csv`
/// exports it), with counts and each team's completion rate. Platform services and quality
/// officers name the centre (`institution`).
pub(crate) fn list(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("follow-ups");
    let get = |k: &str| {
        req.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let p = &g.principal;
    let institution = match p.kind {
        Kind::Clinician | Kind::System => p
            .institution
            .clone()
            .ok_or_else(|| ApiError::of(Code::Forbidden, "The client belongs to no institution"))?,
        Kind::Platform => get("institution").ok_or_else(|| {
            ApiError::of(
                Code::Required,
                "Name the centre: institution=urn:hutong:org:…",
            )
            .with_expression("institution")
        })?,
        Kind::Operator if p.can(hutong_access::Capability::OverseeQuality) => get("institution")
            .ok_or_else(|| {
                ApiError::of(
                    Code::Required,
                    "Name the centre: institution=urn:hutong:org:…",
                )
                .with_expression("institution")
            })?,
        _ => return Err(ApiError::of(
            Code::Forbidden,
            "Follow-up lists are the family doctor teams' (and the platform's quality officers')",
        )),
    };
    let status = match get("status") {
        None => None,
        Some(s) => Some(Due::parse(&s).ok_or_else(|| {
            ApiError::of(
                Code::Value,
                format!("status is overdue, due or done, not '{s}'"),
            )
            .with_expression("status")
        })?),
    };
    let team = get("team").map(|t| t.trim_start_matches("CareTeam/").to_string());
    let now = now_ms();
    let all = worklist(engine, &institution, now)?;
    let mut teams: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &all {
        let t = teams.entry(e.team.clone()).or_default();
        t.0 += 1;
        t.1 += usize::from(e.standing.standard);
        *counts.entry(e.standing.status.as_str()).or_default() += 1;
    }
    let shown: Vec<&Entry> = all
        .iter()
        .filter(|e| status.is_none_or(|s| e.standing.status == s))
        .filter(|e| team.as_ref().is_none_or(|t| &e.team == t))
        .collect();
    g.note(format!(
        "follow-up list of {institution}: {} residents",
        all.len()
    ));
    let csv = get("format").as_deref() == Some("csv");
    let paging = if csv {
        Paging {
            count: shown.len().max(1),
            offset: 0,
        }
    } else {
        Paging::parse(&req.query, Paging::LISTS)?
    };
    let mut entries = Vec::new();
    let mut rows = vec![
        "patient,name,conditions,last_follow_up,follow_ups_in_year,due,status,team".to_string(),
    ];
    for e in shown.iter().skip(paging.offset).take(paging.count) {
        // The centre's own record of the resident (its contract's Patient), as it may read it.
        let name = match engine.store.read("Patient", &e.patient, &g.scope)?.found() {
            Some(s) if !s.deleted => {
                let body: Value = serde_json::from_slice(&g.release(&s)).unwrap_or(Value::Null);
                body["name"][0]["text"]
                    .as_str()
                    .map(String::from)
                    .or_else(|| {
                        let n = &body["name"][0];
                        n["family"]
                            .as_str()
                            .map(|f| format!("{f}{}", n["given"][0].as_str().unwrap_or("")))
                    })
            }
            _ => None,
        }
        .unwrap_or_default();
        let conditions: Vec<&str> = e.conditions.iter().map(|c| c.zh()).collect();
        if csv {
            rows.push(format!(
                "{},{},{},{},{},{},{},{}",
                e.patient,
                name.replace(',', " "),
                conditions.join("/"),
                e.last.map(format_instant).unwrap_or_default(),
                e.standing.in_year,
                format_instant(e.standing.due),
                e.standing.status.as_str(),
                e.team
            ));
        }
        entries.push(json!({
            // The contract, or the downward referral that brought the resident.
            "via": e.episode,
            "patient": format!("Patient/{}", e.patient),
            "name": name,
            "conditions": e.conditions.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "conditionsZh": conditions,
            "lastFollowUp": e.last.map(format_instant),
            "followUpsInYear": e.standing.in_year,
            "due": format_instant(e.standing.due),
            "status": e.standing.status.as_str(),
            "team": if e.team.is_empty() { Value::Null } else { json!(format!("CareTeam/{}", e.team)) }
        }));
    }
    if csv {
        return Ok(Resp {
            status: 200,
            headers: vec![
                ("Content-Type".into(), "text/csv; charset=utf-8".into()),
                (
                    "Content-Disposition".into(),
                    "attachment; filename=\"follow-ups.csv\"".into(),
                ),
            ],
            body: crate::wire::Body::Raw((rows.join("\n") + "\n").into_bytes()),
        });
    }
    let team_list: Vec<Value> = teams
        .iter()
        .map(|(t, (n, ok))| {
            json!({
                "team": if t.is_empty() { Value::Null } else { json!(format!("CareTeam/{t}")) },
                "residents": n, "standard": ok,
                "completionRate": if *n == 0 { 0.0 } else { *ok as f64 / *n as f64 }
            })
        })
        .collect();
    Ok(Resp::json(
        200,
        json!({
            "institution": institution,
            "generated": format_instant(now),
            "total": shown.len(),
            "counts": {"overdue": counts.get("overdue").copied().unwrap_or(0), "due": counts.get("due").copied().unwrap_or(0), "done": counts.get("done").copied().unwrap_or(0)},
            "teams": team_list,
            "entries": entries
        }),
    ))
}

/// Pushes each centre its follow-up list's news once a day (Beijing time): how many of its
/// residents are overdue and due this week, to the centre's family doctor teams' inbox (the
/// app channel, addressed to the institution). Returns how many centres were told.
pub fn push(engine: &Engine, now: i64) -> Result<usize, ApiError> {
    let day = (now + 8 * 3_600_000).div_euclid(86_400_000);
    let centres = engine.store.query_admin(
        "SELECT DISTINCT institution FROM co_contract WHERE status = 'active' \
         AND institution NOT IN (SELECT institution FROM co_push WHERE day = ?)",
        &[Val::Int(day)],
    )?;
    let mut told = 0;
    for r in centres {
        let inst = r[0].text().to_string();
        let list = worklist(engine, &inst, now)?;
        let count = |d: Due| list.iter().filter(|e| e.standing.status == d).count();
        let (overdue, due) = (count(Due::Overdue), count(Due::ThisWeek));
        if overdue + due > 0 {
            engine
                .access
                .accounts
                .send(
                    "app",
                    &inst,
                    &format!("【互通】慢病随访提醒：签约居民中本周应随访 {due} 人，逾期未随访 {overdue} 人。请在医生工作站“慢病随访”中查看名单。"),
                )
                .map_err(crate::consent::auth_error)?;
            follow_up_task(engine, &inst, overdue, due, now)?;
            told += 1;
        }
        engine.store.exec_admin(
            "INSERT INTO co_push (institution, day) VALUES (?, ?)",
            &[Val::Text(inst), Val::Int(day)],
        )?;
    }
    Ok(told)
}

/// The day's follow-up Task for a centre: assigned to it, its counts as inputs, pointing to
/// the worklist — so that a centre's system subscribed to `follow-up-due` (or to its Tasks)
/// hears of it without polling.
fn follow_up_task(
    engine: &Engine,
    inst: &str,
    overdue: usize,
    due: usize,
    now: i64,
) -> Result<(), ApiError> {
    let name = crate::consent::organization_of(engine, inst)?
        .and_then(|o| o["name"].as_str().map(String::from));
    let mut task = json!({
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "priority": if overdue > 0 { "urgent" } else { "routine" },
        "code": {"coding": [{"system": CONTRACT_SYSTEM, "code": FOLLOW_UP_LIST, "display": "慢病随访提醒"}],
                 "text": "慢病随访提醒 Follow-ups due"},
        "description": format!("本周应随访 {due} 人，逾期未随访 {overdue} 人 ({due} due this week, {overdue} overdue)"),
        "authoredOn": format_instant(now),
        "owner": crate::governance::orders::owner_json(inst, name),
        "input": [
            {"type": {"text": "overdue"}, "valueInteger": overdue},
            {"type": {"text": "due"}, "valueInteger": due},
            {"type": {"text": "worklist"}, "valueString": "$follow-ups"}
        ]
    });
    let platform = engine.config.default_source.clone();
    engine.intake(&mut task, &platform, now);
    let pg = Guard::platform(engine, "contracts", "follow-up-push");
    let sub = Submission {
        findings: &[],
        fingerprint: "",
    };
    let r = pg.write(engine, |tx| {
        engine
            .create_in(
                tx,
                &pg,
                &platform,
                "Task",
                None,
                Cow::Borrowed(&task),
                None,
                &sub,
                None,
            )
            .map(|_| ())
    });
    pg.finish(engine, if r.is_ok() { 201 } else { 500 }, None);
    r
}

/// `POST $follow-ups/$push` (the platform's services): today's push now, if not yet done.
pub(crate) fn push_op(engine: &Engine, g: &Guard) -> Result<Resp, ApiError> {
    g.act("follow-up-push");
    if g.principal.kind != Kind::Platform {
        return Err(ApiError::of(
            Code::Forbidden,
            "The follow-up push is the platform's",
        ));
    }
    let n = push(engine, now_ms())?;
    Ok(Resp::json(200, json!({"told": n})))
}

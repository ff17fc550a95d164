//! The read interactions — read, vread, search, history, `$everything` — and the rendering
//! every response shares: each resource released through the request's [`Guard`], so what a
//! reader may not see is masked or withheld the same way on every path.

use crate::error::ApiError;
use crate::error::Code;
use crate::guard::Guard;
use crate::wire::check_id;
use crate::wire::check_type;
use crate::wire::etag;
use crate::wire::page_link;
use crate::wire::prefer_return;
use crate::wire::Body;
use crate::wire::BundleWriter;
use crate::wire::Paging;
use crate::wire::Req;
use crate::wire::Resp;
use crate::wire::Return;
use crate::wire::ENTRY_FRAME;
use crate::Engine;
use hutong_access::principal::Perms;
use hutong_fhir::date::{format_http, format_instant};
use hutong_fhir::{IssueCode, Outcome};
use hutong_store::search::Everything;
use hutong_store::{HistoryScope, Lookup, Page, Query, Stored, Tx};
use serde_json::{json, Map, Value};

impl Engine {
    /// The current version of `t/id` if the reader may see it: 404 when there is none,
    /// 403 when it is outside their authorization.
    pub fn visible(&self, g: &Guard, t: &str, id: &str) -> Result<Stored, ApiError> {
        g.may(t, Perms::READ)?;
        match self.store.read(t, id, &g.scope)? {
            Lookup::Found(s) => Ok(s),
            Lookup::Hidden => Err(g.hidden(&format!("{t}/{id}"))),
            Lookup::Missing => Err(ApiError::not_found(format!("{t}/{id} is not known"))),
        }
    }

    pub fn read(&self, g: &Guard, t: &str, id: &str) -> Result<Resp, ApiError> {
        let s = self.visible(g, t, id)?;
        if s.deleted {
            return Err(ApiError::of(
                Code::Gone,
                format!("{t}/{id} was deleted (version {})", s.version),
            ));
        }
        Ok(resource_ok(g, &s))
    }

    pub(crate) fn vread(&self, g: &Guard, t: &str, id: &str, v: &str) -> Result<Resp, ApiError> {
        let version: i64 = v
            .parse()
            .map_err(|_| ApiError::bad_request(format!("Invalid version '{v}'")))?;
        g.may(t, Perms::READ)?;
        let s = match self.store.vread(t, id, version, &g.scope)? {
            Lookup::Found(s) => s,
            Lookup::Hidden => return Err(g.hidden(&format!("{t}/{id}"))),
            Lookup::Missing => {
                return Err(ApiError::not_found(format!("{t}/{id} has no version {v}")))
            }
        };
        if s.deleted {
            return Err(ApiError::of(
                Code::Gone,
                format!("Version {v} of {t}/{id} is a deletion"),
            ));
        }
        Ok(resource_ok(g, &s))
    }

    pub fn search(
        &self,
        req: &Req,
        g: &Guard,
        t: &str,
        params: &[(String, String)],
        compartment: Option<&str>,
    ) -> Result<Resp, ApiError> {
        g.may(t, Perms::SEARCH)?;
        let strict = req
            .header("prefer")
            .is_some_and(|p| p.contains("handling=strict"));
        let mut q = Query::parse(t, params, strict)?;
        if let Some(p) = compartment {
            q = q.in_compartment(p)?;
        }
        let page = self.store.search(&q, &g.scope)?;
        let path = match compartment {
            Some(p) => format!("{}/Patient/{p}/{t}", req.base),
            None => format!("{}/{t}", req.base),
        };
        Ok(Self::searchset(
            req,
            g,
            &path,
            &q.canonical,
            q.count,
            q.offset,
            &page,
            &q.ignored,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn searchset(
        req: &Req,
        g: &Guard,
        path: &str,
        canonical: &[(String, String)],
        count: usize,
        offset: usize,
        page: &Page,
        ignored: &[String],
    ) -> Resp {
        let qs = |off: usize| page_link(path, canonical, count, off);
        let mut links = vec![("self", qs(offset))];
        if page.has_more {
            links.push(("next", qs(offset + count)));
        }
        if offset > 0 {
            links.push(("previous", qs(offset.saturating_sub(count))));
        }
        let elements: Option<Vec<String>> = canonical
            .iter()
            .find(|(k, _)| k == "_elements")
            .map(|(_, v)| v.split(',').map(|s| s.trim().to_string()).collect());
        let summary = canonical
            .iter()
            .find(|(k, _)| k == "_summary")
            .map(|(_, v)| v.as_str());
        let mut w = BundleWriter::new("searchset", page.total, &links);
        // The whole page in one allocation: growing a megabyte buffer copies it.
        w.reserve(
            page.matches
                .iter()
                .chain(&page.included)
                .map(|s| s.body.len() + req.base.len() + s.rtype.len() + s.id.len() + ENTRY_FRAME)
                .sum(),
        );
        for s in &page.matches {
            let body = shape(g.release(s), elements.as_deref(), summary);
            w.search_entry(&req.base, &s.rtype, &s.id, "match", &body);
        }
        for s in &page.included {
            w.search_entry(&req.base, &s.rtype, &s.id, "include", g.release(s).as_ref());
        }
        if !ignored.is_empty() {
            let oo = Outcome::default().with(
                "warning",
                IssueCode::NotSupported,
                format!(
                    "Unknown search parameters were ignored: {}",
                    ignored.join(", ")
                ),
                None,
            );
            let bytes = serde_json::to_vec(&oo.to_json()).unwrap_or_default();
            w.entry(json!({"search": {"mode": "outcome"}}), Some(&bytes));
        }
        Resp {
            status: 200,
            headers: Vec::new(),
            body: Body::Raw(w.finish()),
        }
    }

    pub(crate) fn history(
        &self,
        req: &Req,
        g: &Guard,
        which: HistoryScope,
    ) -> Result<Resp, ApiError> {
        let Paging { count, offset } = Paging::parse(&req.query, (20, 1000))?;
        let mut since = None;
        for (_, v) in req.query.iter().filter(|(k, _)| k == "_since") {
            since = Some(
                hutong_fhir::date::parse(v)
                    .ok_or_else(|| ApiError::bad_request(format!("Invalid _since '{v}'")))?
                    .lo,
            );
        }
        let (versions, total) = self
            .store
            .history(&which, since, count + 1, offset, &g.scope)?;
        let has_more = versions.len() > count;
        let path = match &which {
            HistoryScope::Instance { rtype, id } => format!("{}/{rtype}/{id}/_history", req.base),
            HistoryScope::Type(t) => format!("{}/{t}/_history", req.base),
            HistoryScope::System => format!("{}/_history", req.base),
        };
        let mut links = vec![("self", page_link(&path, &req.query, count, offset))];
        if has_more {
            links.push(("next", page_link(&path, &req.query, count, offset + count)));
        }
        if offset > 0 {
            links.push((
                "previous",
                page_link(&path, &req.query, count, offset.saturating_sub(count)),
            ));
        }
        let mut w = BundleWriter::new("history", total, &links);
        for s in versions.iter().take(count) {
            let method = if s.deleted {
                "DELETE"
            } else if s.version == 1 {
                "POST"
            } else {
                "PUT"
            };
            let url = if s.version == 1 && !s.deleted {
                s.rtype.clone()
            } else {
                format!("{}/{}", s.rtype, s.id)
            };
            let status = if s.deleted {
                "204"
            } else if s.version == 1 {
                "201"
            } else {
                "200"
            };
            let body = if s.deleted { None } else { Some(g.release(s)) };
            w.entry(
                json!({"fullUrl": format!("{}/{}/{}", req.base, s.rtype, s.id),
                    "request": {"method": method, "url": url},
                    "response": {"status": status, "etag": etag(s.version), "lastModified": format_instant(s.last_updated)}}),
                body.as_deref(),
            );
        }
        Ok(Resp {
            status: 200,
            headers: Vec::new(),
            body: Body::Raw(w.finish()),
        })
    }

    /// `Patient/{id}/$everything`.
    pub fn everything(&self, req: &Req, g: &Guard, id: &str) -> Result<Resp, ApiError> {
        check_id(id)?;
        g.act("everything");
        let p = self.visible(g, "Patient", id)?;
        if p.deleted {
            return Err(ApiError::not_found(format!("Patient/{id} is not known")));
        }
        let paging = Paging::parse(&req.query, (1000, 5000))?;
        let mut e = Everything {
            patient: id.to_string(),
            count: paging.count,
            offset: paging.offset,
            ..Default::default()
        };
        let date = |k: &str, v: &str| {
            hutong_fhir::date::parse(v)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid {k} '{v}'")))
        };
        for (k, v) in &req.query {
            match k.as_str() {
                "start" => e.start = Some(date(k, v)?.lo),
                "end" => e.end = Some(date(k, v)?.hi),
                "_since" => e.since = Some(date(k, v)?.lo),
                "_type" => {
                    for t in v.split(',') {
                        check_type(t)?;
                        e.types.push(t.to_string());
                    }
                }
                _ => {}
            }
        }
        let page = self.store.everything(&e, &g.scope)?;
        let canonical: Vec<(String, String)> = req
            .query
            .iter()
            .filter(|(k, _)| k != "_offset")
            .cloned()
            .collect();
        Ok(Self::searchset(
            req,
            g,
            &format!("{}/Patient/{id}/$everything", req.base),
            &canonical,
            e.count,
            e.offset,
            &page,
            &[],
        ))
    }
}

/// `200 OK` with a stored version as the reader may see it, its ETag and Last-Modified.
pub(crate) fn resource_ok(g: &Guard, s: &Stored) -> Resp {
    let headers = vec![
        ("ETag".to_string(), etag(s.version)),
        ("Last-Modified".to_string(), format_http(s.last_updated)),
    ];
    Resp {
        status: 200,
        headers,
        body: Body::Raw(g.release(s).into_owned()),
    }
}

pub(crate) fn resource_headers(resp: Resp, s: &Stored) -> Resp {
    resp.header("ETag", etag(s.version))
        .header("Last-Modified", format_http(s.last_updated))
}

/// A created/updated resource answered as `Prefer` asks.
pub(crate) fn write_response(req: &Req, g: &Guard, status: u16, s: &Stored) -> Resp {
    let loc = format!("{}/{}/{}/_history/{}", req.base, s.rtype, s.id, s.version);
    let r = match prefer_return(req) {
        Return::Minimal => Resp {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        },
        Return::Representation => Resp {
            status,
            headers: Vec::new(),
            body: Body::Raw(g.release(s).into_owned()),
        },
        Return::Outcome => Resp::json(
            status,
            Outcome::info(format!(
                "{} {}/{} version {}",
                if status == 201 { "Created" } else { "Updated" },
                s.rtype,
                s.id,
                s.version
            ))
            .to_json(),
        ),
    };
    resource_headers(r.header("Location", loc), s)
}

/// `_elements` / `_summary=true|text|data` applied to one resource.
pub(crate) fn shape<'a>(
    body: std::borrow::Cow<'a, [u8]>,
    elements: Option<&[String]>,
    summary: Option<&str>,
) -> std::borrow::Cow<'a, [u8]> {
    if elements.is_none() && !matches!(summary, Some("true") | Some("data") | Some("text")) {
        return body;
    }
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    let mandatory = ["resourceType", "id", "meta"];
    let keep = |k: &str| -> bool {
        if mandatory.contains(&k) {
            return true;
        }
        if let Some(els) = elements {
            return els.iter().any(|e| e == k);
        }
        match summary {
            Some("text") => k == "text",
            Some("data") => k != "text",
            // Without the element definitions at hand, `true` keeps the common summary
            // elements: identifiers, status, codes, subject, dates and names.
            _ => !matches!(
                k,
                "text"
                    | "contained"
                    | "extension"
                    | "modifierExtension"
                    | "note"
                    | "component"
                    | "photo"
            ),
        }
    };
    let mut out: Map<String, Value> = o.into_iter().filter(|(k, _)| keep(k)).collect();
    let tag = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"});
    if let Some(Value::Object(meta)) = out.get_mut("meta") {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Some(a) = tags.as_array_mut() {
            a.push(tag);
        }
    }
    match serde_json::to_vec(&Value::Object(out)) {
        Ok(v) => std::borrow::Cow::Owned(v),
        Err(_) => body,
    }
}

/// The current version of `t/id` inside a write, if this reader may see it: 404 when it is
/// not there (or deleted), 403 when it is hidden — as a read would answer.
pub fn visible_in(g: &Guard, tx: &mut Tx<'_>, t: &str, id: &str) -> Result<Stored, ApiError> {
    match tx.read(t, id)? {
        Some(s) if !s.deleted && g.scope.permits_stored(&s) => Ok(s),
        Some(s) if !s.deleted => Err(g.hidden(&format!("{t}/{id}"))),
        _ => Err(ApiError::not_found(format!("{t}/{id} is not known"))),
    }
}

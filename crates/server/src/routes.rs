//! The REST routing table: which interaction or operation a request is, decided once from
//! its method and path; and the request's life around it (the guard made before, its audit
//! entry finished after). The handlers live in their domains; nothing imports this module
//! but the HTTP front and the crate root.

use crate::error::ApiError;
use crate::error::Code;
use crate::guard::Guard;
use crate::wire::check_id;
use crate::wire::check_type;
use crate::wire::parse_query_string;
use crate::wire::percent_encode;
use crate::wire::Body;
use crate::wire::BundleWriter;
use crate::wire::Req;
use crate::wire::Resp;
use crate::Engine;
use hutong_access::principal::Perms;
use hutong_store::HistoryScope;

impl Engine {
    /// Handles one request (blocking: call from a blocking thread). The access decision is
    /// made once, before dispatch; the request's audit entry is recorded when it ends.
    pub fn handle(&self, req: &Req) -> Resp {
        let guard = Guard::new(
            self,
            req.principal.clone(),
            req.reason.clone(),
            req.from.clone(),
            req.line(),
        );
        self.handle_with(req, &guard)
    }

    /// Handles a request under an existing guard (its entry is finished here).
    pub fn handle_with(&self, req: &Req, guard: &Guard) -> Resp {
        let r = match self.dispatch(req, guard) {
            Ok(r) => r,
            Err(e) => Resp::error(&e),
        };
        let detail = (r.status >= 400).then(|| match &r.body {
            Body::Json(v) => v["issue"][0]["diagnostics"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            _ => String::new(),
        });
        guard.finish(self, r.status, detail.filter(|d| !d.is_empty()));
        r
    }

    fn dispatch(&self, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
        let seg: Vec<&str> = req.segments.iter().map(String::as_str).collect();
        let m = req.method.as_str();
        // Persons and their review Tasks are derived from the Patients: bring them up to date
        // before anyone reads them.
        if (m == "GET" || seg.get(1) == Some(&"_search"))
            && matches!(seg.first(), Some(&"Person") | Some(&"Task"))
        {
            self.matcher.sync(&self.store)?;
        }
        match (m, seg.as_slice()) {
            ("GET", ["metadata"]) => {
                g.act("capabilities");
                Ok(Resp::json(200, crate::capability::statement(&req.base)))
            }
            // The definitions of the operations the CapabilityStatement names are the
            // server's own (read-only; the store holds any others).
            ("GET", ["OperationDefinition", id])
                if crate::capability::operation_definition(id).is_some() =>
            {
                g.act("read");
                let d = crate::capability::operation_definition(id).expect("checked");
                Ok(Resp::json(200, d.clone()))
            }
            ("GET", ["OperationDefinition"])
                if req.query.iter().any(|(k, v)| {
                    k == "url" && !crate::capability::operation_definitions_by_url(v).is_empty()
                }) =>
            {
                g.act("search");
                let url = req
                    .query
                    .iter()
                    .find(|(k, _)| k == "url")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("");
                let found = crate::capability::operation_definitions_by_url(url);
                let link = format!("{}/OperationDefinition?url={}", req.base, percent_encode(url));
                let mut w = BundleWriter::new("searchset", Some(found.len() as u64), &[("self", link)]);
                for d in found {
                    let id = d["id"].as_str().unwrap_or("");
                    let body = serde_json::to_vec(d).unwrap_or_default();
                    w.search_entry(&req.base, "OperationDefinition", id, "match", &body);
                }
                Ok(Resp {
                    status: 200,
                    headers: Vec::new(),
                    body: Body::Raw(w.finish()),
                })
            }
            ("POST", []) => crate::engine::bundle::process(self, req, g),
            ("GET", ["_history"]) => {
                g.act("history");
                self.history(req, g, HistoryScope::System)
            }
            ("GET", []) | ("GET", ["_search"]) | ("POST", ["_search"]) => Err(ApiError::of(Code::Unsupported,
                "System-level search needs a resource type; use /{type}?…",
            )),
            (m, ["AuditEvent", ..]) if m != "GET" && !req.segments.iter().any(|s| s.starts_with('$')) => {
                Err(ApiError::of(Code::MethodNotAllowed,
                    format!("{m} is not allowed on AuditEvent: the audit trail is written by the platform alone, one entry per access or change, and is never changed or deleted"),
                ))
            }
            ("GET", ["AuditEvent"]) | ("GET", ["AuditEvent", _]) => {
                crate::consent::trail::audit_events(self, req, g)
            }
            (_, [op, ..]) if op.starts_with('$') => crate::operations::dispatch(self, req, g),
            ("GET", [t]) => {
                check_type(t)?;
                g.act("search");
                self.search(req, g, t, &req.query, None)
            }
            ("POST", [t, "_search"]) => {
                check_type(t)?;
                g.act("search");
                let mut params = req.query.clone();
                params.extend(parse_query_string(
                    std::str::from_utf8(&req.body).unwrap_or(""),
                ));
                self.search(req, g, t, &params, None)
            }
            ("GET", [t, "_history"]) => {
                check_type(t)?;
                g.act("history");
                g.may(t, Perms::READ)?;
                self.history(req, g, HistoryScope::Type(t.to_string()))
            }
            (_, [t, op, ..]) | (_, [t, _, op]) if op.starts_with('$') => {
                check_type(t)?;
                crate::operations::dispatch(self, req, g)
            }
            ("POST", [t]) => {
                check_type(t)?;
                g.act("create");
                self.create(req, g, t)
            }
            ("PUT", [t]) => {
                check_type(t)?;
                g.act("update");
                self.conditional_update(req, g, t)
            }
            ("DELETE", [t]) => {
                check_type(t)?;
                g.act("delete");
                self.conditional_delete(req, g, t)
            }
            ("GET", [t, id]) => {
                check_type(t)?;
                check_id(id)?;
                g.act("read");
                let r = self.read(g, t, id)?;
                // Conditional read: the client's copy is current.
                let etag = r
                    .headers
                    .iter()
                    .find(|(k, _)| k == "ETag")
                    .map(|(_, v)| v.clone());
                match (req.header("if-none-match"), etag) {
                    (Some(inm), Some(e))
                        if inm.split(',').any(|x| x.trim() == e || x.trim() == "*") =>
                    {
                        Ok(Resp {
                            status: 304,
                            headers: r.headers,
                            body: Body::Empty,
                        })
                    }
                    _ => Ok(r),
                }
            }
            ("PUT", [t, id]) => {
                check_type(t)?;
                check_id(id)?;
                g.act("update");
                self.update(req, g, t, id)
            }
            ("PATCH", [t, id]) => {
                check_type(t)?;
                check_id(id)?;
                g.act("patch");
                self.patch(req, g, t, id)
            }
            ("DELETE", [t, id]) => {
                check_type(t)?;
                check_id(id)?;
                g.act("delete");
                self.delete(req, g, t, id)
            }
            ("GET", [t, id, "_history"]) => {
                check_type(t)?;
                check_id(id)?;
                g.act("history");
                self.visible(g, t, id)?;
                self.history(
                    req,
                    g,
                    HistoryScope::Instance {
                        rtype: t.to_string(),
                        id: id.to_string(),
                    },
                )
            }
            ("GET", [t, id, "_history", v]) => {
                check_type(t)?;
                check_id(id)?;
                g.act("vread");
                self.vread(g, t, id, v)
            }
            ("GET", ["Patient", id, ct]) => {
                check_id(id)?;
                check_type(ct)?;
                g.act("search");
                self.visible(g, "Patient", id)?;
                self.search(req, g, ct, &req.query, Some(id))
            }
            (m, _) if !matches!(m, "GET" | "POST" | "PUT" | "PATCH" | "DELETE") => {
                Err(ApiError::of(Code::MethodNotAllowed,
                    format!("Method {m} is not supported"),
                ))
            }
            _ => Err(ApiError::not_found(format!(
                "No FHIR interaction at {} /{}",
                m,
                req.segments.join("/")
            ))),
        }
    }
}

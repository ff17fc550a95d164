//! A node of the platform hierarchy (区县 → 地市 → 省): what it is, where its upstream is, and
//! the wire between nodes.
//!
//! Records move between nodes as FHIR `history` Bundles — the shape a notification already
//! has — whose entries carry the request that made each version (`PUT`/`DELETE Type/id`) and
//! the sender's version in `response.etag`. A receiver applies an entry only when that
//! version is newer than the last it applied from the same peer, so a resend after an outage
//! writes nothing twice and an older version never overwrites a newer one.
//!
//! A copy keeps its origin: `meta.source` stays the institution that submitted it; the
//! nodes it passed through are listed in order on `meta` ([`ROUTE_URL`]), with the version
//! it had where it was first submitted ([`ORIGIN_VERSION_URL`]). A copy pushed *down* is
//! marked so ([`DIRECTION_URL`]) and never forwarded up again.

use serde_json::{json, Value};

/// The levels of the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    District,
    City,
    Province,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::District, Level::City, Level::Province];

    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::District => "district",
            Level::City => "city",
            Level::Province => "province",
        }
    }

    pub fn label_zh(self) -> &'static str {
        match self {
            Level::District => "区县平台",
            Level::City => "地市平台",
            Level::Province => "省级平台",
        }
    }

    /// Whether a node of this level may have `upper` as its upstream.
    pub fn may_report_to(self, upper: Level) -> bool {
        matches!(
            (self, upper),
            (Level::District, Level::City | Level::Province) | (Level::City, Level::Province)
        )
    }
}

/// This node: its id (also its client id at the upstream), level and links.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub level: Level,
    /// The district a district node serves (GB/T 2260 code or name): whose records the
    /// upstream pushes down to it.
    pub district: Option<String>,
    pub upstream: Option<Upstream>,
    /// What the upstream pushes down, as subscription filters (`Type` or `Type?search`).
    pub push: Vec<String>,
}

/// The upstream node and this node's credentials there.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Its FHIR base URL (`https://city.example/fhir`).
    pub url: String,
    /// This node's client secret there (its client id is the node id).
    pub secret: String,
}

/// The default of what the city pushes down to each district (the seed's 慢病、妇幼、免疫):
/// the residents themselves, their diagnoses (chronic diseases), care plans (chronic disease
/// management, maternal and child health programmes) and immunizations.
pub const DEFAULT_PUSH: [&str; 4] = ["Patient", "Condition", "CarePlan", "Immunization"];

/// Why a node's configuration is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct NodeError(pub String);

impl Node {
    /// A node from its settings, checked: a known level, an id usable as a client id, an
    /// upstream only below the province, a district for a district node that takes pushes.
    pub fn new(
        id: &str,
        level: &str,
        district: Option<String>,
        upstream: Option<Upstream>,
        push: Option<Vec<String>>,
    ) -> Result<Node, NodeError> {
        let level = Level::parse(level).ok_or_else(|| {
            NodeError(format!(
                "node level is district, city or province, not '{level}'"
            ))
        })?;
        if id.is_empty()
            || id.len() > 64
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        {
            return Err(NodeError(format!(
                "node id '{id}' must be 1-64 letters, digits, '-' or '.' (it is the node's client id upstream)"
            )));
        }
        if let Some(u) = &upstream {
            if level == Level::Province {
                return Err(NodeError(
                    "a province node has no upstream (it is the top of the hierarchy)".into(),
                ));
            }
            if !(u.url.starts_with("http://") || u.url.starts_with("https://")) {
                return Err(NodeError(format!(
                    "the upstream is a FHIR base URL (http:// or https://), not '{}'",
                    u.url
                )));
            }
            if u.secret.is_empty() {
                return Err(NodeError(
                    "the upstream needs this node's client secret there (--upstream-secret or HUTONG_UPSTREAM_SECRET)".into(),
                ));
            }
        }
        let push = push.unwrap_or_else(|| DEFAULT_PUSH.iter().map(|s| s.to_string()).collect());
        for p in &push {
            let t = p.split('?').next().unwrap_or("");
            if !hutong_fhir::Definitions::get().is_resource_type(t) {
                return Err(NodeError(format!(
                    "a pushed category is 'Type' or 'Type?search', not '{p}'"
                )));
            }
        }
        Ok(Node {
            id: id.to_string(),
            level,
            district: district.filter(|d| !d.is_empty()),
            upstream: upstream.map(|u| Upstream {
                url: u.url.trim_end_matches('/').to_string(),
                ..u
            }),
            push,
        })
    }

    /// Whether this node asks its upstream to push its district's records down.
    pub fn takes_pushes(&self) -> bool {
        self.level == Level::District && self.upstream.is_some() && self.district.is_some()
    }
}

/// `meta.extension`: one per node a copy passed through, in order (valueString: node id).
pub const ROUTE_URL: &str = "https://hutong.dev/fhir/StructureDefinition/route";
/// `meta.extension`: the version a copy had at the node where it was submitted.
pub const ORIGIN_VERSION_URL: &str = "https://hutong.dev/fhir/StructureDefinition/origin-version";
/// `meta.extension`: `down` on a copy pushed down from the upstream.
pub const DIRECTION_URL: &str = "https://hutong.dev/fhir/StructureDefinition/copy-direction";

fn meta_ext(v: &Value) -> impl Iterator<Item = &Value> {
    v["meta"]["extension"].as_array().into_iter().flatten()
}

/// The nodes a copy passed through, first to last.
pub fn route_of(v: &Value) -> Vec<String> {
    meta_ext(v)
        .filter(|e| e["url"] == ROUTE_URL)
        .filter_map(|e| e["valueString"].as_str().map(String::from))
        .collect()
}

/// The version the copy had where it was submitted, if it is a copy.
pub fn origin_version(v: &Value) -> Option<i64> {
    meta_ext(v)
        .find(|e| e["url"] == ORIGIN_VERSION_URL)
        .and_then(|e| e["valueInteger"].as_i64())
}

/// Whether the copy was pushed down from an upstream.
pub fn pushed_down(v: &Value) -> bool {
    meta_ext(v).any(|e| e["url"] == DIRECTION_URL && e["valueCode"] == "down")
}

/// Marks `v` as received from `peer` (the route grows by it); the version it had at `peer`
/// becomes its origin version unless an earlier node already set one. `down`: it was pushed
/// down from the upstream.
pub fn receive(v: &mut Value, peer: &str, peer_version: i64, down: bool) {
    let origin = origin_version(v).unwrap_or(peer_version);
    let Some(o) = v.as_object_mut() else { return };
    let meta = o.entry("meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let ext = meta
        .as_object_mut()
        .expect("an object")
        .entry("extension")
        .or_insert_with(|| json!([]));
    if !ext.is_array() {
        *ext = json!([]);
    }
    let list = ext.as_array_mut().expect("an array");
    list.retain(|e| e["url"] != ORIGIN_VERSION_URL && e["url"] != DIRECTION_URL);
    list.push(json!({"url": ROUTE_URL, "valueString": peer}));
    list.push(json!({"url": ORIGIN_VERSION_URL, "valueInteger": origin}));
    if down {
        list.push(json!({"url": DIRECTION_URL, "valueCode": "down"}));
    }
}

/// One version sent to a peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub rtype: String,
    pub id: String,
    pub version: i64,
    /// `None`: the version is a deletion.
    pub resource: Option<Value>,
}

/// The `history` Bundle that carries `items` to a peer, in order.
pub fn history_bundle(items: &[Outgoing]) -> Value {
    let entries: Vec<Value> = items
        .iter()
        .map(|o| {
            let url = format!("{}/{}", o.rtype, o.id);
            let etag = format!("W/\"{}\"", o.version);
            match &o.resource {
                Some(r) => json!({
                    "fullUrl": url, "resource": r,
                    "request": {"method": "PUT", "url": url},
                    "response": {"status": if o.version == 1 { "201" } else { "200" }, "etag": etag}
                }),
                None => json!({
                    "request": {"method": "DELETE", "url": url},
                    "response": {"status": "204", "etag": etag}
                }),
            }
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "history", "entry": entries})
}

/// One version received from a peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// Its place in the Bundle (for the response and error locations).
    pub index: usize,
    pub rtype: String,
    pub id: String,
    /// The version it has at the peer.
    pub version: i64,
    pub resource: Option<Value>,
}

/// Why an entry of a received Bundle cannot be applied (the rest still are).
#[derive(Debug, Clone, PartialEq)]
pub struct EntryError {
    pub index: usize,
    pub message: String,
}

/// The versions a `history` Bundle carries (a node's forward or a notification): entries
/// that are not a `PUT`/`POST`/`DELETE` of `Type/id` with a version — a notification's
/// `SubscriptionStatus` — are passed over; malformed ones are reported.
pub fn incoming(bundle: &Value) -> Result<Vec<Result<Incoming, EntryError>>, String> {
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "history" {
        return Err("a node sends a Bundle of type history".into());
    }
    let mut out = Vec::new();
    for (index, e) in bundle["entry"].as_array().into_iter().flatten().enumerate() {
        let method = e["request"]["method"].as_str().unwrap_or("");
        if !matches!(method, "PUT" | "POST" | "DELETE") {
            continue;
        }
        let err = |m: &str| {
            Err(EntryError {
                index,
                message: m.to_string(),
            })
        };
        let url = e["request"]["url"].as_str().unwrap_or("");
        let mut parts = url.split('/');
        let (Some(rtype), Some(id), None) = (parts.next(), parts.next(), parts.next()) else {
            out.push(err(&format!(
                "entry.request.url must be Type/id, not '{url}'"
            )));
            continue;
        };
        let version = e["response"]["etag"]
            .as_str()
            .map(|t| t.trim_start_matches("W/").trim_matches('"'))
            .and_then(|t| t.parse::<i64>().ok())
            .filter(|v| *v > 0);
        let Some(version) = version else {
            out.push(err("entry.response.etag must carry the version (W/\"n\")"));
            continue;
        };
        let resource = if method == "DELETE" {
            None
        } else {
            match e.get("resource") {
                Some(r) if r["resourceType"] == rtype && r["id"] == id => Some(r.clone()),
                Some(_) => {
                    out.push(err(&format!(
                        "entry.resource is not {rtype}/{id} as its request says"
                    )));
                    continue;
                }
                None => {
                    out.push(err("a PUT entry carries its resource"));
                    continue;
                }
            }
        };
        out.push(Ok(Incoming {
            index,
            rtype: rtype.to_string(),
            id: id.to_string(),
            version,
            resource,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn up() -> Option<Upstream> {
        Some(Upstream {
            url: "http://city.example/fhir/".into(),
            secret: "s".into(),
        })
    }

    #[test]
    fn nodes_are_checked() {
        let n = Node::new("d1", "district", Some("330106".into()), up(), None).unwrap();
        assert_eq!(n.upstream.unwrap().url, "http://city.example/fhir");
        assert_eq!(n.push, DEFAULT_PUSH);
        assert!(Node::new("p", "province", None, up(), None).is_err());
        assert!(Node::new("x", "county", None, None, None).is_err());
        assert!(Node::new("a b", "city", None, None, None).is_err());
        assert!(Node::new("c", "city", None, None, Some(vec!["Nope".into()])).is_err());
        let bad = Some(Upstream {
            url: "city.example".into(),
            secret: "s".into(),
        });
        assert!(Node::new("c", "city", None, bad, None).is_err());
        assert!(Level::District.may_report_to(Level::City));
        assert!(!Level::Province.may_report_to(Level::City));
    }

    #[test]
    fn a_copy_keeps_its_origin_and_grows_its_route() {
        let mut v =
            json!({"resourceType": "Condition", "id": "c", "meta": {"source": "urn:hutong:org:A"}});
        receive(&mut v, "d1", 3, false);
        receive(&mut v, "city", 5, false);
        assert_eq!(route_of(&v), ["d1", "city"]);
        assert_eq!(origin_version(&v), Some(3));
        assert_eq!(v["meta"]["source"], "urn:hutong:org:A");
        assert!(!pushed_down(&v));
        receive(&mut v, "province", 6, true);
        assert!(pushed_down(&v));
        assert_eq!(origin_version(&v), Some(3));
    }

    #[test]
    fn history_bundles_round_trip() {
        let items = vec![
            Outgoing {
                rtype: "Patient".into(),
                id: "p".into(),
                version: 1,
                resource: Some(json!({"resourceType": "Patient", "id": "p"})),
            },
            Outgoing {
                rtype: "Patient".into(),
                id: "p".into(),
                version: 2,
                resource: None,
            },
        ];
        let got: Vec<Incoming> = incoming(&history_bundle(&items))
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].version, got[1].version), (1, 2));
        assert!(got[1].resource.is_none());
        let bad = json!({"resourceType": "Bundle", "type": "history", "entry": [
            {"request": {"method": "GET", "url": "Subscription/s/$status"}},
            {"request": {"method": "PUT", "url": "Patient/p"}, "response": {"etag": "W/\"2\""},
             "resource": {"resourceType": "Patient", "id": "q"}},
            {"request": {"method": "DELETE", "url": "Patient"}, "response": {"etag": "W/\"2\""}},
            {"request": {"method": "DELETE", "url": "Patient/p"}}
        ]});
        let got = incoming(&bad).unwrap();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(Result::is_err));
        assert_eq!(got[0].as_ref().unwrap_err().index, 1);
        assert!(incoming(&json!({"resourceType": "Bundle", "type": "batch"})).is_err());
    }

    proptest! {
        #[test]
        fn the_reader_never_panics(s in "\\PC{0,200}") {
            if let Ok(v) = serde_json::from_str::<Value>(&s) {
                let _ = incoming(&v);
                let mut v = v;
                receive(&mut v, "n", 1, false);
            }
        }

        #[test]
        fn routes_keep_their_order(hops in proptest::collection::vec("[a-z0-9]{1,8}", 1..6)) {
            let mut v = json!({"resourceType": "Patient", "id": "p"});
            for (i, h) in hops.iter().enumerate() {
                receive(&mut v, h, i as i64 + 1, false);
            }
            prop_assert_eq!(route_of(&v), hops);
            prop_assert_eq!(origin_version(&v), Some(1));
        }
    }
}

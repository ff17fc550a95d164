//! A `Subscription` as the platform reads it. Two kinds, told apart by `criteria`:
//! - **topic-based** (Subscriptions R5 Backport IG): `criteria` is a topic's canonical URL,
//!   filters are `backport-filter-criteria` extensions on `_criteria` (`Observation?code=…`),
//!   the payload's content (`empty`, `id-only`, `full-resource`) an extension on
//!   `channel._payload`, heartbeat, timeout and batch size extensions on `channel`;
//! - **classic** (FHIR R4): `criteria` is a search (`Observation?code=…&patient=…`), and a
//!   notification is the resource itself (with `channel.payload`) or an empty POST.

use serde_json::Value;

use crate::ig;
use crate::notify::Content;
use crate::topic::Topics;

/// How notifications travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// POSTed (or, classic with a payload, PUT) to the subscriber's endpoint.
    RestHook,
    /// Pushed to the subscriber's open websocket, bound with a token.
    Websocket,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::RestHook => "rest-hook",
            ChannelKind::Websocket => "websocket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub kind: ChannelKind,
    pub endpoint: Option<String>,
    /// `Name: value` headers sent with every notification.
    pub headers: Vec<(String, String)>,
    pub content: Content,
    /// Seconds without a notification after which a heartbeat is sent (0: none).
    pub heartbeat_s: u64,
    /// Seconds a receiver has to answer.
    pub timeout_s: u64,
    /// Events at most in one notification.
    pub max_count: usize,
}

/// Which changes a subscription wants: `rtype` (`*` for any) and a search over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub rtype: String,
    /// The search's query string (undecoded), without the type.
    pub query: String,
}

/// A subscription, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The topic's canonical (without version); `None` for a classic subscription.
    pub topic: Option<String>,
    pub filters: Vec<Filter>,
    pub channel: Channel,
    /// The shared secret notifications are signed with, if the subscriber gave one.
    pub secret: Option<String>,
    /// The status the submitter wrote (`requested`, `active`, `off`, `error`).
    pub status: String,
    /// When it ends (`Subscription.end`, an instant), if it does.
    pub end: Option<String>,
}

/// Why a Subscription cannot be accepted: the message and the element at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    pub message: String,
    pub expression: String,
}

fn err(message: impl Into<String>, expression: &str) -> SpecError {
    SpecError {
        message: message.into(),
        expression: expression.to_string(),
    }
}

fn extensions<'a>(v: &'a Value, url: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    v["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |e| e["url"] == url)
}

fn ext_uint(channel: &Value, url: &str, path: &str) -> Result<Option<u64>, SpecError> {
    match extensions(channel, url).next() {
        None => Ok(None),
        Some(e) => e["valueUnsignedInt"]
            .as_u64()
            .or_else(|| e["valuePositiveInt"].as_u64())
            .map(Some)
            .ok_or_else(|| err(format!("{url} needs a non-negative integer"), path)),
    }
}

/// Splits `Type?query` (or `Type`).
fn split_search(s: &str) -> (&str, &str) {
    let s = s.trim().trim_start_matches('/');
    s.split_once('?').unwrap_or((s, ""))
}

fn is_type_name(t: &str) -> bool {
    t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphanumeric())
}

impl Spec {
    /// Reads a submitted Subscription against the topics offered.
    pub fn parse(v: &Value, topics: &Topics) -> Result<Spec, SpecError> {
        let criteria = v["criteria"]
            .as_str()
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| {
                err(
                    "A Subscription needs criteria: a topic's canonical URL, or a search such as Observation?code=…",
                    "Subscription.criteria",
                )
            })?
            .trim();
        let status = v["status"].as_str().unwrap_or("requested").to_string();
        if !matches!(status.as_str(), "requested" | "active" | "off" | "error") {
            return Err(err(
                format!("Unknown status {status}: requested, active, off or error"),
                "Subscription.status",
            ));
        }
        let ch = &v["channel"];
        let kind = match ch["type"].as_str() {
            Some("rest-hook") => ChannelKind::RestHook,
            Some("websocket") => ChannelKind::Websocket,
            Some(other) => {
                return Err(err(
                    format!("The channel type {other} is not offered here: rest-hook or websocket"),
                    "Subscription.channel.type",
                ))
            }
            None => {
                return Err(err(
                    "A Subscription needs channel.type",
                    "Subscription.channel.type",
                ))
            }
        };
        let endpoint = ch["endpoint"]
            .as_str()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        if kind == ChannelKind::RestHook {
            match endpoint {
                Some(e) if e.starts_with("http://") || e.starts_with("https://") => {}
                Some(e) => {
                    return Err(err(
                        format!("The rest-hook endpoint {e} is not an http(s) URL"),
                        "Subscription.channel.endpoint",
                    ))
                }
                None => {
                    return Err(err(
                        "A rest-hook subscription needs channel.endpoint",
                        "Subscription.channel.endpoint",
                    ))
                }
            }
        }
        let mut headers = Vec::new();
        for (i, h) in ch["header"].as_array().into_iter().flatten().enumerate() {
            let (name, value) = h
                .as_str()
                .and_then(|s| s.split_once(':'))
                .filter(|(n, _)| {
                    !n.trim().is_empty() && n.trim().bytes().all(|b| b.is_ascii_graphic())
                })
                .ok_or_else(|| {
                    err(
                        "A channel header is written `Name: value`",
                        &format!("Subscription.channel.header[{i}]"),
                    )
                })?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let classic = !(criteria.starts_with("http://")
            || criteria.starts_with("https://")
            || criteria.starts_with("urn:"));
        let declared = extensions(&ch["_payload"], ig::PAYLOAD_CONTENT)
            .next()
            .map(|e| {
                e["valueCode"]
                    .as_str()
                    .and_then(Content::parse)
                    .ok_or_else(|| {
                        err(
                            "The payload content is empty, id-only or full-resource",
                            "Subscription.channel.payload",
                        )
                    })
            })
            .transpose()?;
        let has_payload = ch["payload"].as_str().is_some_and(|p| !p.is_empty());
        if has_payload {
            let p = ch["payload"].as_str().unwrap_or("");
            if !p.contains("json") {
                return Err(err(
                    format!("The payload type {p} is not offered: application/fhir+json"),
                    "Subscription.channel.payload",
                ));
            }
        }
        let content = match (declared, classic, has_payload) {
            (Some(c), _, _) => c,
            (None, true, true) => Content::Full,
            (None, true, false) => Content::Empty,
            (None, false, _) => Content::IdOnly,
        };
        let heartbeat_s =
            ext_uint(ch, ig::HEARTBEAT, "Subscription.channel.extension")?.unwrap_or(0);
        let timeout_s = ext_uint(ch, ig::TIMEOUT, "Subscription.channel.extension")?
            .unwrap_or(10)
            .clamp(1, 120);
        let max_count = match ext_uint(ch, ig::MAX_COUNT, "Subscription.channel.extension")? {
            Some(0) => {
                return Err(err(
                    "backport-max-count must be at least 1",
                    "Subscription.channel.extension",
                ))
            }
            Some(n) => n.min(1000) as usize,
            None if classic => 1,
            None => 100,
        };
        let secret = extensions(v, ig::SIGNING_SECRET)
            .next()
            .map(|e| {
                e["valueString"]
                    .as_str()
                    .filter(|s| s.len() >= 16)
                    .map(String::from)
                    .ok_or_else(|| {
                        err(
                            "The signing secret is a string of at least 16 characters",
                            "Subscription.extension",
                        )
                    })
            })
            .transpose()?;
        let (topic, filters) = if classic {
            let (t, q) = split_search(criteria);
            if !is_type_name(t) {
                return Err(err(
                    format!("The criteria {criteria} are neither a topic's URL nor a search (Type?params)"),
                    "Subscription.criteria",
                ));
            }
            (
                None,
                vec![Filter {
                    rtype: t.to_string(),
                    query: q.to_string(),
                }],
            )
        } else {
            let t = topics.get(criteria).ok_or_else(|| {
                err(
                    format!("The topic {criteria} is not offered here (GET Subscription/$topics lists those that are)"),
                    "Subscription.criteria",
                )
            })?;
            let mut filters = Vec::new();
            for (i, e) in extensions(&v["_criteria"], ig::FILTER_CRITERIA).enumerate() {
                let at = format!("Subscription._criteria.extension[{i}]");
                let s = e["valueString"]
                    .as_str()
                    .ok_or_else(|| err("A filter criteria extension holds valueString", &at))?;
                if !t.takes_filters() {
                    return Err(err(format!("The topic {} takes no filters", t.url), &at));
                }
                let (rt, q) = split_search(s);
                if !is_type_name(rt) {
                    return Err(err(
                        format!("The filter {s} does not start with a resource type"),
                        &at,
                    ));
                }
                if !t.fires_on(rt) {
                    return Err(err(
                        format!("The topic {} does not fire on {rt}", t.url),
                        &at,
                    ));
                }
                filters.push(Filter {
                    rtype: rt.to_string(),
                    query: q.to_string(),
                });
            }
            if filters.is_empty() {
                let rtype = if t.types.len() == 1 {
                    t.types[0].clone()
                } else {
                    "*".into()
                };
                filters.push(Filter {
                    rtype,
                    query: String::new(),
                });
            }
            (Some(t.url.clone()), filters)
        };
        Ok(Spec {
            topic,
            filters,
            channel: Channel {
                kind,
                endpoint: endpoint.map(String::from),
                headers,
                content,
                heartbeat_s,
                timeout_s,
                max_count,
            },
            secret,
            status,
            end: v["end"].as_str().map(String::from),
        })
    }

    pub fn is_classic(&self) -> bool {
        self.topic.is_none()
    }

    /// Whether a classic R4 receiver is expected (the resource itself, or an empty POST),
    /// rather than a Backport notification Bundle.
    pub fn classic_wire(&self) -> bool {
        self.is_classic() && self.channel.kind == ChannelKind::RestHook
    }
}

/// What a read shows in place of a secret.
pub const MASKED: &str = "***";

/// Hides a Subscription's secrets from whoever reads it: the values of `channel.header`
/// (a receiver's credentials, often) and the signing secret. Whether anything was hidden.
pub fn mask_secrets(v: &mut Value) -> bool {
    let mut hid = false;
    if let Some(hs) = v["channel"]["header"].as_array_mut() {
        for h in hs.iter_mut() {
            if let Some((name, _)) = h.as_str().and_then(|s| s.split_once(':')) {
                *h = Value::String(format!("{name}: {MASKED}"));
                hid = true;
            }
        }
    }
    if let Some(es) = v["extension"].as_array_mut() {
        for e in es.iter_mut().filter(|e| e["url"] == ig::SIGNING_SECRET) {
            e["valueString"] = Value::String(MASKED.into());
            hid = true;
        }
    }
    hid
}

/// Puts back into a submitted Subscription the secrets a read masked (`old` is the stored
/// version), so that reading, changing and writing back keeps them.
pub fn restore_secrets(new: &mut Value, old: &Value) {
    let old_headers: Vec<(String, String)> = old["channel"]["header"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| {
            h.as_str()?
                .split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    if let Some(hs) = new["channel"]["header"].as_array_mut() {
        for h in hs.iter_mut() {
            let Some((name, value)) = h.as_str().and_then(|s| s.split_once(':')) else {
                continue;
            };
            if value.trim() == MASKED {
                if let Some((n, v)) = old_headers.iter().find(|(n, _)| n == name.trim()) {
                    *h = Value::String(format!("{n}: {v}"));
                }
            }
        }
    }
    let old_secret = old["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == ig::SIGNING_SECRET)
        .and_then(|e| e["valueString"].as_str().map(String::from));
    if let (Some(es), Some(secret)) = (new["extension"].as_array_mut(), old_secret) {
        for e in es
            .iter_mut()
            .filter(|e| e["url"] == ig::SIGNING_SECRET && e["valueString"] == MASKED)
        {
            e["valueString"] = Value::String(secret.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{RECORD_CHANGED, TASK_ASSIGNED};
    use proptest::prelude::*;
    use serde_json::json;

    fn topics() -> Topics {
        Topics::builtin()
    }

    fn backport(criteria: &str, filters: &[&str]) -> Value {
        json!({
            "resourceType": "Subscription", "status": "requested", "reason": "test",
            "criteria": criteria,
            "_criteria": {"extension": filters.iter().map(|f| json!({"url": ig::FILTER_CRITERIA, "valueString": f})).collect::<Vec<_>>()},
            "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook",
                "header": ["Authorization: Bearer x"],
                "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": ig::PAYLOAD_CONTENT, "valueCode": "full-resource"}]},
                "extension": [{"url": ig::HEARTBEAT, "valueUnsignedInt": 60}, {"url": ig::MAX_COUNT, "valuePositiveInt": 20}]}
        })
    }

    #[test]
    fn a_backport_subscription_reads_whole() {
        let s = Spec::parse(
            &backport(
                RECORD_CHANGED,
                &["Observation?code=http://loinc.org|4548-4&patient=Patient/p1"],
            ),
            &topics(),
        )
        .unwrap();
        assert_eq!(s.topic.as_deref(), Some(RECORD_CHANGED));
        assert_eq!(
            s.filters,
            vec![Filter {
                rtype: "Observation".into(),
                query: "code=http://loinc.org|4548-4&patient=Patient/p1".into()
            }]
        );
        assert_eq!(s.channel.content, Content::Full);
        assert_eq!((s.channel.heartbeat_s, s.channel.max_count), (60, 20));
        assert_eq!(
            s.channel.headers,
            vec![("Authorization".into(), "Bearer x".into())]
        );
        assert!(!s.classic_wire());
    }

    #[test]
    fn a_classic_subscription_is_a_search() {
        let v = json!({"resourceType": "Subscription", "status": "requested", "criteria": "Observation?code=4548-4",
            "channel": {"type": "rest-hook", "endpoint": "https://h.example/fhir", "payload": "application/fhir+json"}});
        let s = Spec::parse(&v, &topics()).unwrap();
        assert!(s.is_classic() && s.classic_wire());
        assert_eq!(s.filters[0].rtype, "Observation");
        assert_eq!((s.channel.content, s.channel.max_count), (Content::Full, 1));
        let mut v2 = v.clone();
        v2["channel"].as_object_mut().unwrap().remove("payload");
        assert_eq!(
            Spec::parse(&v2, &topics()).unwrap().channel.content,
            Content::Empty
        );
    }

    #[test]
    fn refusals_name_the_element() {
        let t = topics();
        let e = Spec::parse(
            &backport("https://example.org/SubscriptionTopic/x", &[]),
            &t,
        )
        .unwrap_err();
        assert_eq!(e.expression, "Subscription.criteria");
        assert!(e.message.contains("not offered"));
        let e = Spec::parse(&backport(TASK_ASSIGNED, &["Observation?code=1"]), &t).unwrap_err();
        assert_eq!(e.expression, "Subscription._criteria.extension[0]");
        let mut v = backport(RECORD_CHANGED, &[]);
        v["channel"]["type"] = json!("email");
        assert_eq!(
            Spec::parse(&v, &t).unwrap_err().expression,
            "Subscription.channel.type"
        );
        v["channel"]["type"] = json!("rest-hook");
        v["channel"]["endpoint"] = json!("ftp://x");
        assert_eq!(
            Spec::parse(&v, &t).unwrap_err().expression,
            "Subscription.channel.endpoint"
        );
        let v = json!({"resourceType": "Subscription", "criteria": "not a search", "channel": {"type": "websocket"}});
        assert_eq!(
            Spec::parse(&v, &t).unwrap_err().expression,
            "Subscription.criteria"
        );
    }

    #[test]
    fn secrets_are_masked_on_read_and_restored_on_write_back() {
        let mut v = backport(RECORD_CHANGED, &[]);
        v["extension"] = json!([{"url": ig::SIGNING_SECRET, "valueString": "0123456789abcdef!"}]);
        let stored = v.clone();
        assert!(mask_secrets(&mut v));
        assert_eq!(v["channel"]["header"][0], "Authorization: ***");
        assert_eq!(v["extension"][0]["valueString"], MASKED);
        restore_secrets(&mut v, &stored);
        assert_eq!(v, stored);
        // A new value is kept, not overwritten.
        let mut changed = stored.clone();
        changed["channel"]["header"] = json!(["Authorization: Bearer y"]);
        restore_secrets(&mut changed, &stored);
        assert_eq!(changed["channel"]["header"][0], "Authorization: Bearer y");
    }

    #[test]
    fn a_topic_without_filters_fires_on_its_types() {
        let s = Spec::parse(&backport(TASK_ASSIGNED, &[]), &topics()).unwrap();
        assert_eq!(
            s.filters,
            vec![Filter {
                rtype: "Task".into(),
                query: String::new()
            }]
        );
        let s = Spec::parse(&backport(RECORD_CHANGED, &[]), &topics()).unwrap();
        assert_eq!(s.filters[0].rtype, "*");
    }

    proptest! {
        /// Whatever a submitter sends, reading it answers (a spec or a refusal), never panics,
        /// and an accepted spec's filters name types the topic fires on.
        #[test]
        fn any_input_is_read_or_refused(criteria in ".{0,40}", filter in "[A-Za-z?=&|/:.0-9]{0,30}",
                                       kind in prop::sample::select(vec!["rest-hook", "websocket", "sms", ""]),
                                       endpoint in prop::option::of("(https?://|ftp://)?[a-z0-9.:/]{0,20}"),
                                       max in prop::option::of(0u64..5000)) {
            let mut v = json!({"resourceType": "Subscription", "criteria": criteria,
                "_criteria": {"extension": [{"url": ig::FILTER_CRITERIA, "valueString": filter}]},
                "channel": {"type": kind}});
            if let Some(e) = endpoint { v["channel"]["endpoint"] = json!(e); }
            if let Some(m) = max { v["channel"]["extension"] = json!([{"url": ig::MAX_COUNT, "valuePositiveInt": m}]); }
            let t = topics();
            if let Ok(s) = Spec::parse(&v, &t) {
                prop_assert!(s.channel.max_count >= 1 && s.channel.max_count <= 1000);
                if let Some(url) = &s.topic {
                    let topic = t.get(url).unwrap();
                    for f in &s.filters { prop_assert!(f.rtype == "*" || topic.fires_on(&f.rtype)); }
                }
                if s.channel.kind == ChannelKind::RestHook { prop_assert!(s.channel.endpoint.is_some()); }
            }
        }
    }
}

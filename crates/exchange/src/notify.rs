//! Notification Bundles as the Backport IG shapes them for R4: a `history` Bundle whose
//! first entry is the `SubscriptionStatus` (a `Parameters` resource), then one entry per
//! event — its focus by reference (`id-only`), with the resource (`full-resource`), or none
//! (`empty`). Events are numbered per subscription from 1, so a receiver that missed some
//! can ask `$events` for them and one that got some twice can drop the repeats.

use serde_json::{json, Value};

use crate::ig;

/// How much of each event a notification carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Empty,
    IdOnly,
    Full,
}

impl Content {
    pub fn parse(s: &str) -> Option<Content> {
        Some(match s {
            "empty" => Content::Empty,
            "id-only" => Content::IdOnly,
            "full-resource" => Content::Full,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Content::Empty => "empty",
            Content::IdOnly => "id-only",
            Content::Full => "full-resource",
        }
    }
}

/// Why a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationKind {
    Handshake,
    Heartbeat,
    EventNotification,
    QueryStatus,
    QueryEvent,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Handshake => "handshake",
            NotificationKind::Heartbeat => "heartbeat",
            NotificationKind::EventNotification => "event-notification",
            NotificationKind::QueryStatus => "query-status",
            NotificationKind::QueryEvent => "query-event",
        }
    }
}

/// One event as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub number: i64,
    /// When the change was written (ms).
    pub ts: i64,
    pub rtype: String,
    pub id: String,
    pub version: i64,
    pub deleted: bool,
    /// The resource as the subscriber may see it (`full-resource`), if it may.
    pub resource: Option<Value>,
    /// The subscriber may no longer read it (consent revoked since): the event keeps its
    /// number, its focus is left out.
    pub withheld: bool,
}

/// The subscription as a notification describes it.
#[derive(Debug, Clone)]
pub struct Status<'a> {
    pub base: &'a str,
    pub subscription: &'a str,
    /// The topic canonical (classic subscriptions: their criteria).
    pub topic: &'a str,
    pub status: &'a str,
    pub events_since_start: i64,
    pub error: Option<&'a str>,
}

fn instant(ms: i64) -> String {
    hutong_fhir::date::format_instant(ms)
}

/// The `SubscriptionStatus` (R4: `Parameters` with the IG's profile).
pub fn status(s: &Status<'_>, kind: NotificationKind, events: &[Event], content: Content) -> Value {
    let mut p = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{}/Subscription/{}", s.base, s.subscription)}}),
        json!({"name": "status", "valueCode": s.status}),
        json!({"name": "type", "valueCode": kind.as_str()}),
        json!({"name": "events-since-subscription-start", "valueString": s.events_since_start.to_string()}),
    ];
    // A classic subscription has no topic (its criteria are a search): none is named.
    if !s.topic.is_empty() {
        p.insert(1, json!({"name": "topic", "valueCanonical": s.topic}));
    }
    for e in events {
        let mut part = vec![
            json!({"name": "event-number", "valueString": e.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": instant(e.ts)}),
        ];
        if content != Content::Empty && !e.withheld {
            // The resource's URL, as the entry's fullUrl (the version is in its etag).
            part.push(json!({"name": "focus", "valueReference": {"reference": format!("{}/{}/{}", s.base, e.rtype, e.id)}}));
        }
        p.push(json!({"name": "notification-event", "part": part}));
    }
    if let Some(err) = s.error {
        p.push(json!({"name": "error", "valueCodeableConcept": {"text": err}}));
    }
    json!({"resourceType": "Parameters", "meta": {"profile": [ig::STATUS_PROFILE]}, "parameter": p})
}

/// A notification Bundle.
pub fn bundle(
    s: &Status<'_>,
    kind: NotificationKind,
    events: &[Event],
    content: Content,
    id: &str,
    now_ms: i64,
) -> Value {
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{id}"),
        "resource": status(s, kind, events, content),
        "request": {"method": "GET", "url": format!("{}/Subscription/{}/$status", s.base, s.subscription)},
        "response": {"status": "200"}
    })];
    if content != Content::Empty {
        for e in events.iter().filter(|e| !e.withheld) {
            let url = format!("{}/{}", e.rtype, e.id);
            let (method, status) = match (e.deleted, e.version) {
                (true, _) => ("DELETE", "204"),
                (false, 1) => ("POST", "201"),
                _ => ("PUT", "200"),
            };
            let mut entry = json!({
                "fullUrl": format!("{}/{url}", s.base),
                "request": {"method": method, "url": url},
                "response": {"status": status, "etag": format!("W/\"{}\"", e.version)}
            });
            if content == Content::Full && !e.deleted {
                if let Some(r) = &e.resource {
                    entry["resource"] = r.clone();
                }
            }
            entries.push(entry);
        }
    }
    json!({
        "resourceType": "Bundle",
        "id": id,
        "meta": {"profile": [ig::NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": instant(now_ms),
        "entry": entries
    })
}

/// The signature header's value for `body`: `sha256=<hex HMAC-SHA256>` under the
/// subscription's secret.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Checks a signature header as a receiver would (constant time).
pub fn verify(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    if hex.len() != 64 || !hex.is_ascii() {
        return false;
    }
    let bytes: Option<Vec<u8>> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    let Some(tag) = bytes else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, body, &tag).is_ok()
}

/// Reads the event numbers and foci out of a notification Bundle (a receiver's view; the
/// tests and the node links use it).
pub fn events_of(bundle: &Value) -> Vec<(i64, Option<String>)> {
    let params = bundle["entry"][0]["resource"]["parameter"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    params
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .map(|p| {
            let parts = p["part"].as_array().cloned().unwrap_or_default();
            let num = parts
                .iter()
                .find(|x| x["name"] == "event-number")
                .and_then(|x| x["valueString"].as_str())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let focus = parts
                .iter()
                .find(|x| x["name"] == "focus")
                .and_then(|x| x["valueReference"]["reference"].as_str())
                .map(String::from);
            (num, focus)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: i64, v: i64, withheld: bool) -> Event {
        Event {
            number: n,
            ts: 1_765_000_000_000,
            rtype: "Observation".into(),
            id: "o1".into(),
            version: v,
            deleted: false,
            resource: Some(json!({"resourceType": "Observation", "id": "o1"})),
            withheld,
        }
    }

    fn st() -> Status<'static> {
        Status {
            base: "http://h/fhir",
            subscription: "s1",
            topic: "https://hutong.dev/fhir/SubscriptionTopic/record-changed",
            status: "active",
            events_since_start: 7,
            error: None,
        }
    }

    #[test]
    fn a_notification_leads_with_its_status_and_numbers_its_events() {
        let b = bundle(
            &st(),
            NotificationKind::EventNotification,
            &[ev(6, 1, false), ev(7, 2, false)],
            Content::Full,
            "b1",
            0,
        );
        assert_eq!(b["type"], "history");
        let p = &b["entry"][0]["resource"];
        assert_eq!(p["resourceType"], "Parameters");
        assert_eq!(p["parameter"][3]["valueCode"], "event-notification");
        assert_eq!(p["parameter"][4]["valueString"], "7");
        assert_eq!(
            events_of(&b),
            vec![
                (6, Some("http://h/fhir/Observation/o1".into())),
                (7, Some("http://h/fhir/Observation/o1".into()))
            ]
        );
        assert_eq!(b["entry"][1]["request"]["method"], "POST");
        assert_eq!(b["entry"][2]["request"]["method"], "PUT");
        assert_eq!(b["entry"][2]["resource"]["id"], "o1");
        assert_eq!(b["timestamp"], instant(0));
    }

    #[test]
    fn id_only_and_empty_carry_less_and_withheld_events_keep_their_number() {
        let b = bundle(
            &st(),
            NotificationKind::EventNotification,
            &[ev(1, 1, false), ev(2, 1, true)],
            Content::IdOnly,
            "b",
            0,
        );
        assert_eq!(b["entry"].as_array().unwrap().len(), 2);
        assert!(b["entry"][1].get("resource").is_none());
        assert_eq!(
            events_of(&b),
            vec![(1, Some("http://h/fhir/Observation/o1".into())), (2, None)]
        );
        let b = bundle(
            &st(),
            NotificationKind::EventNotification,
            &[ev(1, 1, false)],
            Content::Empty,
            "b",
            0,
        );
        assert_eq!(b["entry"].as_array().unwrap().len(), 1);
        assert_eq!(events_of(&b), vec![(1, None)]);
    }

    #[test]
    fn a_classic_subscription_names_no_topic() {
        let mut s = st();
        s.topic = "";
        let p = status(&s, NotificationKind::Heartbeat, &[], Content::Empty);
        assert!(p["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["name"] != "topic"));
        assert_eq!(p["parameter"][1]["name"], "status");
    }

    #[test]
    fn signatures_verify_and_tampering_does_not() {
        let s = sign("0123456789abcdef", b"{\"a\":1}");
        assert!(verify("0123456789abcdef", b"{\"a\":1}", &s));
        assert!(!verify("0123456789abcdef", b"{\"a\":2}", &s));
        assert!(!verify("another secret!!", b"{\"a\":1}", &s));
        assert!(!verify("0123456789abcdef", b"{\"a\":1}", "sha256=zz"));
    }
}

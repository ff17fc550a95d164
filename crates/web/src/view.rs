//! How resources read to people: what kind of item each is, a one-line summary, when it
//! happened, where it came from, and small charts drawn on the server.

use std::collections::HashMap;

use maud::{html, Markup};
use serde_json::Value;

use crate::Lang;

/// The kinds a resident filters the timeline by.
pub const KINDS: &[(&str, &str, &str)] = &[
    ("visits", "就诊", "Visits"),
    ("results", "检验结果", "Results"),
    ("exams", "检查", "Exams"),
    ("vaccinations", "疫苗接种", "Vaccinations"),
    ("medications", "用药", "Medications"),
    ("problems", "诊断与过敏", "Diagnoses & allergies"),
];

/// The resource types on the timeline and the kind each (mostly) falls under; a
/// DiagnosticReport is a result or an exam by its category.
pub const TYPES: &[(&str, &str)] = &[
    ("Encounter", "visits"),
    ("Observation", "results"),
    ("DiagnosticReport", "results"),
    ("DiagnosticReport", "exams"),
    ("ImagingStudy", "exams"),
    ("Procedure", "exams"),
    ("Immunization", "vaccinations"),
    ("MedicationRequest", "medications"),
    ("MedicationStatement", "medications"),
    ("MedicationDispense", "medications"),
    ("Condition", "problems"),
    ("AllergyIntolerance", "problems"),
];

/// The timeline kind of a resource (`None`: not shown on the timeline).
pub fn kind_of(v: &Value) -> Option<&'static str> {
    Some(match v["resourceType"].as_str()? {
        "Encounter" => "visits",
        "Observation" => "results",
        "DiagnosticReport" => {
            let lab = v["category"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["coding"].as_array().into_iter().flatten())
                .any(|c| c["code"] == "LAB");
            if lab {
                "results"
            } else {
                "exams"
            }
        }
        "ImagingStudy" | "Procedure" => "exams",
        "Immunization" => "vaccinations",
        "MedicationRequest" | "MedicationStatement" | "MedicationDispense" => "medications",
        "Condition" | "AllergyIntolerance" => "problems",
        _ => return None,
    })
}

pub fn kind_label(lang: Lang, kind: &str) -> &'static str {
    KINDS
        .iter()
        .find(|k| k.0 == kind)
        .map(|k| match lang {
            Lang::Zh => k.1,
            Lang::En => k.2,
        })
        .unwrap_or("")
}

/// The words of a CodeableConcept: its text, else the first display, else the code.
pub fn concept(c: &Value) -> String {
    c["text"]
        .as_str()
        .or_else(|| {
            c["coding"]
                .as_array()?
                .iter()
                .find_map(|x| x["display"].as_str())
        })
        .or_else(|| c["coding"][0]["code"].as_str())
        .unwrap_or("")
        .to_string()
}

/// A value with its unit (`5.6 mmol/L`).
pub fn quantity(q: &Value) -> Option<String> {
    let v = q["value"].as_f64()?;
    let unit = q["unit"].as_str().or(q["code"].as_str()).unwrap_or("");
    Some(format!("{} {unit}", trim_number(v)).trim().to_string())
}

fn trim_number(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One line saying what the item is.
pub fn summary(v: &Value) -> String {
    let t = v["resourceType"].as_str().unwrap_or("");
    match t {
        "Encounter" => {
            let what = v["type"][0].clone();
            let kind = concept(&what);
            let reason = concept(&v["reasonCode"][0]);
            [kind, reason]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" · ")
        }
        "Observation" => {
            let name = concept(&v["code"]);
            let value = quantity(&v["valueQuantity"])
                .or_else(|| v["valueString"].as_str().map(String::from))
                .or_else(|| {
                    let c = concept(&v["valueCodeableConcept"]);
                    (!c.is_empty()).then_some(c)
                });
            match value {
                Some(x) => format!("{name}: {x}"),
                None => name,
            }
        }
        "DiagnosticReport" => {
            let name = concept(&v["code"]);
            match v["conclusion"].as_str() {
                Some(c) => format!("{name}: {c}"),
                None => name,
            }
        }
        "Immunization" => {
            let name = concept(&v["vaccineCode"]);
            match v["protocolApplied"][0]["doseNumberPositiveInt"].as_u64() {
                Some(d) => format!("{name} ({d})"),
                None => name,
            }
        }
        "MedicationRequest" | "MedicationStatement" | "MedicationDispense" => {
            let name = concept(&v["medicationCodeableConcept"]);
            match v["dosageInstruction"][0]["text"].as_str() {
                Some(d) => format!("{name} · {d}"),
                None => name,
            }
        }
        "AllergyIntolerance" => format!("⚠ {}", concept(&v["code"])),
        _ => concept(&v["code"]),
    }
}

/// When it happened (ms), by its clinical time.
pub fn when(v: &Value) -> Option<i64> {
    hutong_quality::clinical_time_ms(v)
}

/// A local (UTC+8) date and time for people.
pub fn local(ms: i64) -> String {
    let s = hutong_fhir::date::format_instant(ms + 8 * 3_600_000);
    format!("{} {}", &s[..10], &s[11..16])
}

/// When the source institution collected it (the platform's provenance extension).
pub fn collected(v: &Value) -> Option<i64> {
    v["meta"]["extension"]
        .as_array()?
        .iter()
        .find(|e| {
            e["url"]
                .as_str()
                .is_some_and(|u| u.ends_with("/collection-time"))
        })
        .and_then(|e| e["valueInstant"].as_str())
        .and_then(hutong_fhir::date::parse)
        .map(|r| r.lo)
}

/// A line chart of one test's values over time, with the reference range shaded.
pub fn trend(lang: Lang, points: &[(i64, f64)], range: Option<(f64, f64)>, unit: &str) -> Markup {
    if points.len() < 2 {
        return html! {};
    }
    let (w, h, pad) = (560.0, 180.0, 36.0);
    let (t0, t1) = (points[0].0 as f64, points[points.len() - 1].0 as f64);
    let mut lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let mut hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    if let Some((a, b)) = range {
        lo = lo.min(a);
        hi = hi.max(b);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    let x = |t: i64| pad + (t as f64 - t0) / (t1 - t0).max(1.0) * (w - 2.0 * pad);
    let y = |v: f64| h - pad / 2.0 - (v - lo) / (hi - lo) * (h - pad);
    let path: Vec<String> = points
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
        .collect();
    let label = format!(
        "{} {} {}",
        lang.t("趋势图：", "Trend:"),
        points.len(),
        lang.t("次结果", "results")
    );
    html! {
        svg width="100%" viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(label) {
            @if let Some((a, b)) = range {
                rect x=(pad) y=(format!("{:.1}", y(b))) width=(w - 2.0 * pad) height=(format!("{:.1}", (y(a) - y(b)).max(1.0))) fill="#e6f4ea" {}
            }
            polyline fill="none" stroke="#0b5cad" stroke-width="2" points=(path.join(" ")) {}
            @for (t, v) in points {
                circle cx=(format!("{:.1}", x(*t))) cy=(format!("{:.1}", y(*v))) r="3" fill="#0b5cad" {
                    title { (local(*t)) " " (trim_number(*v)) " " (unit) }
                }
            }
            text x="4" y="14" font-size="12" fill="#57606a" { (trim_number(hi)) " " (unit) }
            text x="4" y=(h - 4.0) font-size="12" fill="#57606a" { (trim_number(lo)) }
        }
    }
}

/// Where an item came from: the institution and when it collected it.
pub fn source_line(lang: Lang, v: &Value, names: &HashMap<String, String>) -> Markup {
    let src = v["meta"]["source"].as_str().unwrap_or("");
    html! {
        span { (lang.t("来源：", "From: ")) (names.get(src).map(String::as_str).unwrap_or(src)) }
        @if let Some(c) = collected(v) {
            " · " span { (lang.t("采集时间：", "Collected: ")) (local(c)) }
        }
    }
}

/// Links that filter a timeline at `base` by kind (`kind` the current one).
pub fn kind_filters(lang: Lang, base: &str, kind: Option<&str>) -> Markup {
    html! {
        nav.filters aria-label=(lang.t("按类别筛选", "Filter by kind")) {
            a href=(base) aria-current=[kind.is_none().then_some("page")] { (lang.t("全部", "All")) }
            @for (k, _, _) in KINDS {
                a href=(format!("{base}?kind={k}")) aria-current=[(kind == Some(*k)).then_some("page")] { (kind_label(lang, k)) }
            }
        }
    }
}

/// The timeline types of `kind` (every timeline type when `None`).
pub fn types_of(kind: Option<&str>) -> Vec<&'static str> {
    TYPES
        .iter()
        .filter(|(_, k)| kind.is_none_or(|want| want == *k))
        .map(|(t, _)| *t)
        .collect()
}

/// The first `limit` of `items` of `kind` (all when `None`).
pub fn of_kind<'a>(items: &'a [Value], kind: Option<&str>, limit: usize) -> Vec<&'a Value> {
    items
        .iter()
        .filter(|v| kind.is_none_or(|k| kind_of(v) == Some(k)))
        .take(limit)
        .collect()
}

/// Timeline items, newest first: kind, when, what (a link when `href` gives one), and where
/// from.
pub fn timeline_list(
    lang: Lang,
    items: &[&Value],
    names: &HashMap<String, String>,
    href: Option<&dyn Fn(&Value) -> String>,
) -> Markup {
    html! {
        ol.timeline style="list-style:none;padding:0" {
            @for v in items {
                li.item {
                    span.tag { (kind_label(lang, kind_of(v).unwrap_or(""))) }
                    strong { (when(v).map(local).unwrap_or_else(|| lang.t("日期不详", "date unknown").to_string())) }
                    " "
                    @match href {
                        Some(h) => { a href=(h(v)) { (summary(v)) } }
                        None => { (summary(v)) }
                    }
                    div.meta { (source_line(lang, v, names)) }
                }
            }
        }
    }
}

/// A table's head row: (中文, English, numeric) per column.
pub fn head(lang: Lang, cols: &[(&str, &str, bool)]) -> Markup {
    html! {
        thead { tr {
            @for (zh, en, num) in cols {
                th.num[*num] scope="col" { (lang.t(zh, en)) }
            }
        } }
    }
}

/// AuditEvents as a table: when, who, what, and a note; break-glass accesses highlighted.
pub fn audit_table(lang: Lang, events: &[Value]) -> Markup {
    html! {
        table {
            thead { tr {
                th scope="col" { (lang.t("时间", "When")) }
                th scope="col" { (lang.t("访问者", "Who")) }
                th scope="col" { (lang.t("操作", "What")) }
                th scope="col" { (lang.t("说明", "Note")) }
            } }
            tbody {
                @for e in events {
                    @let bg = e["meta"]["tag"].to_string().contains("break-glass");
                    tr class=[bg.then_some("breakglass")] {
                        td { (e["recorded"].as_str().and_then(hutong_fhir::date::parse).map(|d| local(d.lo)).unwrap_or_default()) }
                        td { (e["agent"][0]["who"]["display"].as_str().unwrap_or("")) }
                        td { (e["subtype"][1]["code"].as_str().unwrap_or("")) }
                        td {
                            @if bg { strong { (lang.t("紧急调阅 ", "Emergency access ")) } }
                            (e["outcomeDesc"].as_str().unwrap_or(""))
                        }
                    }
                }
            }
        }
    }
}

/// Stacked bars per slot (accepted below, rejected on top in red), with a label every few
/// slots: the intake per hour.
pub fn bars(lang: Lang, labels: &[String], ok: &[u64], bad: &[u64]) -> Markup {
    let n = ok.len().max(1);
    let (w, h, pad, foot) = (960.0, 200.0, 40.0, 22.0);
    let top = ok
        .iter()
        .zip(bad)
        .map(|(a, b)| a + b)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = (w - pad) / n as f64;
    let y = |v: f64| (h - foot) - v / top * (h - foot - 10.0);
    let every = n.div_ceil(12).max(1);
    let total: u64 = ok.iter().chain(bad).sum();
    let label = format!(
        "{} {} {}",
        lang.t("每小时接收量柱状图，共", "Received per hour, total"),
        total,
        lang.t("条", "resources")
    );
    html! {
        svg width="100%" viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(label) {
            text x="2" y="12" font-size="12" fill="#57606a" { (top as u64) }
            line x1=(pad) x2=(w) y1=(y(0.0)) y2=(y(0.0)) stroke="#d0d7de" {}
            @for i in 0..ok.len() {
                @let x = pad + i as f64 * slot + slot * 0.1;
                @let a = ok[i] as f64;
                @let b = bad.get(i).copied().unwrap_or(0) as f64;
                rect x=(format!("{x:.1}")) y=(format!("{:.1}", y(a))) width=(format!("{:.1}", slot * 0.8)) height=(format!("{:.1}", y(0.0) - y(a))) fill="#0b5cad" {
                    title { (labels.get(i).map(String::as_str).unwrap_or("")) " " (ok[i]) }
                }
                @if b > 0.0 {
                    rect x=(format!("{x:.1}")) y=(format!("{:.1}", y(a + b))) width=(format!("{:.1}", slot * 0.8)) height=(format!("{:.1}", (y(a) - y(a + b)).max(1.0))) fill="#a40e26" {
                        title { (labels.get(i).map(String::as_str).unwrap_or("")) " " (lang.t("拒收", "rejected")) " " (b as u64) }
                    }
                }
                @if i % every == 0 {
                    text x=(format!("{:.1}", x)) y=(h - 6.0) font-size="11" fill="#57606a" { (labels.get(i).map(String::as_str).unwrap_or("")) }
                }
            }
        }
    }
}

/// A small line of values (gaps where a value is missing), scaled to `lo..hi`: a trend in a
/// table cell.
pub fn sparkline(label: &str, values: &[Option<f64>], lo: f64, hi: f64) -> Markup {
    let (w, h) = (120.0, 28.0);
    let n = values.len();
    if n == 0 {
        return html! {};
    }
    let span = (hi - lo).max(1e-9);
    let x = |i: usize| {
        if n == 1 {
            w / 2.0
        } else {
            2.0 + i as f64 / (n - 1) as f64 * (w - 4.0)
        }
    };
    let y = |v: f64| h - 3.0 - (v.clamp(lo, hi) - lo) / span * (h - 6.0);
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
        .collect();
    html! {
        svg width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(label) {
            polyline fill="none" stroke="#0b5cad" stroke-width="1.5" points=(points.join(" ")) {}
            @for (i, v) in values.iter().enumerate() {
                @if let Some(v) = v {
                    circle cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(*v))) r="2" fill="#0b5cad" {}
                }
            }
        }
    }
}

/// The reference range of an Observation.
pub fn reference_range(v: &Value) -> Option<(f64, f64)> {
    let r = &v["referenceRange"][0];
    Some((r["low"]["value"].as_f64()?, r["high"]["value"].as_f64()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn items_read_as_people_expect() {
        let o = json!({"resourceType": "Observation", "code": {"text": "血红蛋白"},
            "valueQuantity": {"value": 154.0, "unit": "g/L"}});
        assert_eq!(summary(&o), "血红蛋白: 154 g/L");
        assert_eq!(kind_of(&o), Some("results"));
        let lab = json!({"resourceType": "DiagnosticReport", "code": {"text": "血常规"},
            "category": [{"coding": [{"code": "LAB"}]}]});
        assert_eq!(kind_of(&lab), Some("results"));
        let ct = json!({"resourceType": "DiagnosticReport", "code": {"text": "胸部CT"},
            "conclusion": "未见异常"});
        assert_eq!(
            (kind_of(&ct), summary(&ct).as_str()),
            (Some("exams"), "胸部CT: 未见异常")
        );
        let shot = json!({"resourceType": "Immunization", "vaccineCode": {"coding": [{"code": "MMR", "display": "麻腮风疫苗"}]},
            "protocolApplied": [{"doseNumberPositiveInt": 2}]});
        assert_eq!(summary(&shot), "麻腮风疫苗 (2)");
        assert_eq!(kind_of(&json!({"resourceType": "Patient"})), None);
    }

    #[test]
    fn times_are_shown_in_beijing_time() {
        let ms = hutong_fhir::date::parse("2026-03-01T23:30:00Z").unwrap().lo;
        assert_eq!(local(ms), "2026-03-02 07:30");
    }

    #[test]
    fn a_trend_needs_two_points_and_escapes_nothing_it_should_not() {
        assert_eq!(trend(Lang::Zh, &[(0, 1.0)], None, "g/L").into_string(), "");
        let svg = trend(
            Lang::En,
            &[(0, 1.0), (86_400_000, 2.5)],
            Some((1.2, 2.0)),
            "<b>",
        )
        .into_string();
        assert!(svg.contains("<polyline") && svg.contains("<rect"));
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
    }
}

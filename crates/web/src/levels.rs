//! The console's view of this platform as a node of the hierarchy (上下贯通): its upstream
//! link — backlog, lag, what was forwarded and refused, the last error — and the nodes that
//! forward to it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use hutong_access::principal::Kind;
use hutong_server::http::AppState;
use maud::html;
use serde_json::Value;

use crate::view::local;
use crate::{json_of, notice, problem, Desk, Lang};

fn level_label(lang: Lang, code: &str) -> String {
    match code {
        "district" => lang.t("区县平台", "District node").into(),
        "city" => lang.t("地市平台", "City node").into(),
        "province" => lang.t("省级平台", "Province node").into(),
        "standalone" => lang
            .t(
                "独立平台（未接入上下级）",
                "Standalone (no upper or lower node)",
            )
            .into(),
        other => other.to_string(),
    }
}

/// A named parameter's value (the first `value[x]`), as text.
fn value(p: &Value) -> String {
    p.as_object()
        .into_iter()
        .flatten()
        .find(|(k, _)| k.starts_with("value"))
        .map(|(_, v)| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

fn part<'a>(p: &'a Value, name: &str) -> Option<&'a Value> {
    p["part"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["name"] == name)
}

/// `GET /console/nodes`.
pub async fn console(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let d = match Desk::or_sign_in(&st, &req, addr, Kind::Operator) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let lang = d.lang;
    let title = lang.t("平台层级", "Platform levels");
    let r = d.ask(&st, "GET", "$node", &[], None).await;
    if r.status != 200 {
        return d.page(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN),
            title,
            notice(&problem(&r), true),
        );
    }
    let v = json_of(&r);
    let params: Vec<Value> = v["parameter"].as_array().cloned().unwrap_or_default();
    let named = |n: &str| params.iter().find(|p| p["name"] == n).map(value);
    let level = named("level").unwrap_or_default();
    let upstream = params.iter().find(|p| p["name"] == "upstream");
    let downstream: Vec<&Value> = params
        .iter()
        .filter(|p| p["name"] == "downstream")
        .collect();
    let when = |p: &Value, n: &str| {
        part(p, n)
            .map(value)
            .and_then(|t| hutong_fhir::date::parse(&t))
            .map(|r| local(r.lo))
            .unwrap_or_else(|| "—".into())
    };
    let body = html! {
        p.meta {
            (level_label(lang, &level))
            @if let Some(id) = named("node") { " · " (lang.t("节点", "node")) " " code { (id) } }
            @if let Some(d) = named("district") { " · " (lang.t("辖区", "district")) " " (d) }
        }
        @if let Some(u) = upstream {
            @let backlog = part(u, "backlog").map(value).unwrap_or_default();
            @let error = part(u, "error").map(value);
            table {
                caption { (lang.t("上报上级平台", "Forwarding to the upstream")) }
                tbody {
                    tr { th { (lang.t("上级平台", "Upstream")) } td { code { (part(u, "url").map(value).unwrap_or_default()) } } }
                    tr { th { (lang.t("待上报（积压）", "Waiting (backlog)")) } td { (backlog) " " (lang.t("条变更", "changes")) } }
                    tr { th { (lang.t("最早待上报记录的时延", "Age of the oldest waiting change")) } td { (part(u, "lag-seconds").map(value).unwrap_or_default()) " " (lang.t("秒", "s")) } }
                    tr { th { (lang.t("已上报", "Forwarded")) } td { (part(u, "forwarded").map(value).unwrap_or_default()) } }
                    tr { th { (lang.t("上级拒收（已转为工单）", "Refused upstream (sent back as work orders)")) } td { (part(u, "rejected").map(value).unwrap_or_default()) } }
                    tr { th { (lang.t("最近一次上报", "Last forwarded")) } td { (when(u, "last-forward")) } }
                }
            }
            @if let Some(e) = error {
                (notice(&format!("{}{e}", lang.t("上报暂时失败，将自动重试：", "Forwarding is failing for now and will be retried: ")), true))
            }
            p.meta { (lang.t("计数自本节点启动起；积压与时延来自变更日志，重启后不丢失。", "Counts are since this node started; the backlog and its age come from the change log and survive restarts.")) }
        }
        @if downstream.is_empty() {
            p.empty { (lang.t("还没有下级平台向本节点上报。", "No lower node has forwarded to this node yet.")) }
        } @else {
            div.scroll {
                table {
                    caption { (lang.t("下级平台", "Lower nodes")) }
                    thead { tr {
                        th { (lang.t("节点", "Node")) } th { (lang.t("层级", "Level")) } th { (lang.t("地址", "Address")) }
                        th { (lang.t("已接收", "Received")) } th { (lang.t("最近接收", "Last received")) }
                    } }
                    tbody {
                        @for n in &downstream {
                            tr {
                                td { code { (part(n, "node").map(value).unwrap_or_default()) } }
                                td { (level_label(lang, &part(n, "level").map(value).unwrap_or_default())) }
                                td { code { (part(n, "base").map(value).unwrap_or_default()) } }
                                td { (part(n, "received").map(value).unwrap_or_default()) }
                                td { (when(n, "last-seen")) }
                            }
                        }
                    }
                }
            }
        }
    };
    d.page(StatusCode::OK, title, body)
}

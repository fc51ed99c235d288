//! The control API: HTTP + JSON on loopback. The CLI, scripts and the
//! dashboard talk to the node here. Every route is in the table of
//! [`serve`]; the routes of deploys and the deployments table are in
//! `deployments.rs`, the errors and shared checks in `error.rs`.
//!
//! Every error is `{"error": "<human sentence>", "code": "<snake_case>"}` with
//! a 4xx/5xx status, and every rejected input is logged. Bad input never
//! touches the node's state.

mod audit;
pub mod deployments;
pub mod error;
mod metrics;
mod tags;

use self::error::{list_members, parse_target, ApiError, DEFAULT_REQUEST_TIMEOUT_MS, MAX_REQUEST_TIMEOUT_MS};
use crate::actors::cluster_bus::{ClusterStatus, MemberStatus};
use crate::actors::event_tap::ReaderWants;
use crate::actors::transponder::{PublishRefused, PublishToCluster, RequestCluster};
use crate::monitor::answer::{Isolation, StatusAnswer};
use crate::monitor::board::{summarize, NodeView};
use crate::node::NodeHandle;
use crate::wire::MessageType;
use actix_web::dev::Service;
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::future::Either;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, warn, Instrument};

/// Starts the control API on `addr`; answers the server handle and the
/// address it actually bound (for port 0).
pub fn serve(
    node: NodeHandle,
    addr: SocketAddr,
    max_body: usize,
    token: String,
) -> std::io::Result<(actix_web::dev::ServerHandle, SocketAddr)> {
    let token = std::sync::Arc::new(token);
    // Names the API answers to besides IP addresses (see `check_browser_guard`).
    let mut names = vec!["localhost".to_string()];
    if let Some(host) = crate::node::system_hostname() {
        names.push(host.split('.').next().unwrap_or(&host).to_string());
        names.push(host);
    }
    let names = std::sync::Arc::new(names);
    let server = HttpServer::new(move || {
        let names = names.clone();
        let token = token.clone();
        let shown_token = ApiToken(token.clone());
        // Every log line of a request (rejections included) names the node
        // and `module=api`.
        let span = node.ctx.identity.span("api");
        App::new()
            // Run last to first: the span, the browser guard, then the token.
            .wrap_fn(move |req, srv| match check_token(req.request(), &token) {
                Ok(()) => Either::Left(srv.call(req)),
                Err(e) => {
                    warn!(method = %req.method(), path = %req.path(), error = %e, "refused a request without the API token");
                    Either::Right(futures_util::future::ready(Err(e.into())))
                }
            })
            .wrap_fn(move |req, srv| match check_browser_guard(req.request(), &names) {
                Ok(()) => Either::Left(srv.call(req)),
                Err(e) => {
                    warn!(path = %req.path(), host = ?req.headers().get("host"),
                        origin = ?req.headers().get("origin"), error = %e, "refused a request from a web page");
                    Either::Right(futures_util::future::ready(Err(e.into())))
                }
            })
            .wrap_fn(move |req, srv| srv.call(req).instrument(span.clone()))
            .app_data(web::Data::new(node.clone()))
            .app_data(web::Data::new(shown_token))
            .app_data(json_config(max_body))
            .app_data(web::PayloadConfig::new(max_body))
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .route("/v1/health", web::get().to(health))
            .route("/v1/members", web::get().to(members))
            .route("/v1/publish", web::post().to(publish))
            .route("/v1/request", web::post().to(request))
            .route("/v1/events", web::get().to(events))
            .route("/v1/packages", web::post().to(deployments::upload_package))
            .route("/v1/deploy", web::post().to(deployments::deploy))
            .route("/v1/undeploy", web::post().to(deployments::undeploy))
            .route("/v1/deployments", web::get().to(deployments::list))
            .route("/v1/deployments/{id}/{command}", web::post().to(deployments::steer))
            .route("/v1/tags", web::get().to(tags::show))
            .route("/v1/tags", web::post().to(tags::change))
            .route("/v1/modules", web::get().to(modules))
            .route("/v1/status", web::get().to(status))
            .route("/v1/audit", web::get().to(audit::lines))
            .route("/metrics", web::get().to(metrics::metrics))
            .route("/", web::get().to(dashboard))
            .route("/v1/debug/state", web::get().to(debug_state))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(addr)?;
    let bound = server.addrs().first().copied().unwrap_or(addr);
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((handle, bound))
}

/// Starts the metrics listener on `addr` (`agent --metrics`): `GET
/// /metrics` only, with no token and no Host check, so Prometheus can
/// scrape a node by any name it knows it by; every other path is 404.
/// The text is what `/metrics` on the control API answers, which tells
/// nothing a token guards. Answers the handle and the bound address.
pub fn serve_metrics(
    node: NodeHandle,
    addr: SocketAddr,
) -> std::io::Result<(actix_web::dev::ServerHandle, SocketAddr)> {
    let server = HttpServer::new(move || {
        let span = node.ctx.identity.span("metrics");
        App::new()
            .wrap_fn(move |req, srv| srv.call(req).instrument(span.clone()))
            .app_data(web::Data::new(node.clone()))
            .route("/metrics", web::get().to(metrics::metrics))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(addr)?;
    let bound = server.addrs().first().copied().unwrap_or(addr);
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok((handle, bound))
}

/// Keeps web pages from driving the API through a browser. The API can
/// deploy code to the whole fleet, and it takes JSON without a JSON content
/// type (for curl), so a page elsewhere must not be able to post to it:
/// - a request carrying an `Origin` must come from the API's own origin
///   (browsers send it on cross-site posts; the CLI and curl never do);
/// - the `Host` must be an IP address, `localhost` or this host's own name
///   (`names`), so a page cannot rebind its own domain name to 127.0.0.1
///   and pass as same-origin.
fn check_browser_guard(req: &HttpRequest, names: &[String]) -> Result<(), ApiError> {
    let header = |name: &str| req.headers().get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let host = header("host");
    if let Some(host) = host {
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        let allowed = name.parse::<std::net::IpAddr>().is_ok() || names.iter().any(|n| n.eq_ignore_ascii_case(name));
        if !allowed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                format!(
                    "the control API answers only requests addressed to an IP address, localhost or this host's \
                     name, not `{host}` (this keeps web pages from reaching it through DNS rebinding)"
                ),
            ));
        }
    }
    if let Some(origin) = header("origin") {
        let authority = origin.split_once("://").map(|(_, rest)| rest.trim_end_matches('/'));
        if authority.is_none() || authority != host {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!("the control API refuses requests from other web origins (`{origin}`)"),
            ));
        }
    }
    Ok(())
}

/// The node's API token, for the routes that show more to its holders.
struct ApiToken(std::sync::Arc<String>);

/// Every route that changes anything (any method but GET and HEAD) needs
/// the node's token (see `api_token`).
fn check_token(req: &HttpRequest, token: &str) -> Result<(), ApiError> {
    if matches!(
        *req.method(),
        actix_web::http::Method::GET | actix_web::http::Method::HEAD
    ) {
        return Ok(());
    }
    let header = req.headers().get("authorization").and_then(|v| v.to_str().ok());
    if crate::api_token::authorized(token, header) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!(
            "this route needs the node's API token (`Authorization: Bearer …`, from `<data-dir>/{}`, \
             readable by the node's user)",
            crate::api_token::API_TOKEN_FILE
        ),
    ))
}

fn json_config(max_body: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(max_body)
        .content_type_required(false)
        .error_handler(move |err, req| {
            let api = match &err {
                JsonPayloadError::Overflow { limit } | JsonPayloadError::OverflowKnownLength { limit, .. } => {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("request body is larger than the limit of {limit} bytes"),
                    )
                }
                JsonPayloadError::Deserialize(e) if e.is_data() => ApiError::bad_request(
                    "invalid_request",
                    format!("request body is not what this route takes: {e}"),
                ),
                JsonPayloadError::Deserialize(e) => {
                    ApiError::bad_request("malformed_json", format!("request body is not valid JSON: {e}"))
                }
                JsonPayloadError::ContentType => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "request body must be JSON (Content-Type: application/json)",
                ),
                other => ApiError::bad_request("bad_request", format!("cannot read the request body: {other}")),
            };
            warn!(method = %req.method(), path = %req.path(), code = api.code, error = %api.message,
                "rejected API request");
            api.into()
        })
}

fn query_error(err: QueryPayloadError, req: &HttpRequest) -> actix_web::Error {
    let api = ApiError::bad_request("invalid_query", format!("bad query string: {err}"));
    warn!(path = %req.path(), error = %api.message, "rejected API request");
    api.into()
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

fn check_address(address: &str) -> Result<(), ApiError> {
    if address.trim().is_empty() {
        warn!("rejected API request with an empty address");
        return Err(ApiError::bad_request("invalid_request", "`address` must not be empty"));
    }
    Ok(())
}

fn transponder(node: &NodeHandle) -> Result<actix::Addr<crate::actors::Transponder>, ApiError> {
    node.transponder()
        .ok_or_else(|| ApiError::unavailable("the transponder is restarting; try again in a moment"))
}

async fn health(node: web::Data<NodeHandle>) -> Result<HttpResponse, ApiError> {
    if let Some(fault) = node.core_fault().await {
        warn!(error = %fault, "health check: the node is broken");
        return Err(ApiError::unavailable(format!("this node is broken: {fault}")));
    }
    // Refused by the holder of its name, the node runs but does none of
    // its work in the cluster: a health check must not call that ok.
    if let Some(refused) = node
        .ctx
        .cluster
        .status
        .send(ClusterStatus)
        .await
        .ok()
        .and_then(|c| c.refused)
    {
        warn!(holder = %refused.holder, "health check: this node is refused by the holder of its name");
        return Err(ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "refused",
            format!("this node is out of the cluster: {}", refused.reason),
        ));
    }
    let members = list_members(&node).await?;
    let alive = members.iter().filter(|m| m.status == MemberStatus::Alive).count();
    Ok(HttpResponse::Ok().json(json!({
        "node": node.ctx.identity.name,
        "cluster": node.ctx.identity.cluster,
        "identity": node.settings.node_key.public().to_string(),
        "status": "ok",
        "members_alive": alive,
        "uptime_ms": node.ctx.started.elapsed().as_millis() as u64,
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

#[derive(Deserialize)]
struct MembersQuery {
    status: Option<String>,
    target: Option<String>,
}

async fn members(node: web::Data<NodeHandle>, query: web::Query<MembersQuery>) -> Result<HttpResponse, ApiError> {
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(MemberStatus::parse(s).ok_or_else(|| {
            warn!(status = s, "rejected API request with a bad status filter");
            ApiError::bad_request(
                "bad_status",
                format!("unknown status `{s}`: use alive, suspect, dead or left"),
            )
        })?),
    };
    let target = parse_target(query.target.as_deref().filter(|s| !s.is_empty()))?;
    let members = list_members(&node).await?;
    let members: Vec<_> = members
        .into_iter()
        .filter(|m| status.is_none_or(|s| m.status == s))
        .filter(|m| target.as_ref().is_none_or(|t| t.matches(&m.name, &m.tags)))
        .collect();
    Ok(HttpResponse::Ok().json(members))
}

#[derive(Deserialize)]
struct PublishBody {
    address: String,
    body: Value,
    target: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn publish(node: web::Data<NodeHandle>, req: web::Json<PublishBody>) -> Result<HttpResponse, ApiError> {
    let req = req.into_inner();
    check_address(&req.address)?;
    parse_target(req.target.as_deref())?;
    let kind = match req.kind.as_deref() {
        None => MessageType::Event,
        Some(k) => {
            MessageType::parse(k).ok_or_else(|| ApiError::bad_request("invalid_request", "`type` must not be empty"))?
        }
    };
    if node.ctx.cluster.backpressure.is_congested() {
        debug!(address = %req.address, "publish refused: the node's links are backed up");
        return Err(ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "this node's cluster links are backed up; publish again in a moment",
        ));
    }
    let id = transponder(&node)?
        .send(PublishToCluster {
            kind,
            module: "api".into(),
            address: req.address,
            target: req.target,
            body: req.body,
        })
        .await
        .map_err(|_| ApiError::unavailable("the transponder stopped while publishing"))?
        .map_err(|e| match e {
            PublishRefused::BadTarget(why) => ApiError::bad_request("bad_selector", why),
            order @ PublishRefused::Order(_) => ApiError::new(
                actix_web::http::StatusCode::FORBIDDEN,
                "not_authorized",
                order.to_string(),
            ),
        })?;
    debug!(envelope = %id, "published through the API");
    Ok(HttpResponse::Accepted().json(json!({"id": id})))
}

#[derive(Deserialize)]
struct RequestBody {
    address: String,
    body: Value,
    target: Option<String>,
    timeout_ms: Option<u64>,
}

async fn request(node: web::Data<NodeHandle>, req: web::Json<RequestBody>) -> Result<HttpResponse, ApiError> {
    let req = req.into_inner();
    check_address(&req.address)?;
    parse_target(req.target.as_deref())?;
    let timeout_ms = req.timeout_ms.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS);
    if timeout_ms == 0 || timeout_ms > MAX_REQUEST_TIMEOUT_MS {
        warn!(timeout_ms, "rejected API request with a bad timeout");
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("`timeout_ms` must be between 1 and {MAX_REQUEST_TIMEOUT_MS}"),
        ));
    }
    let outcome = transponder(&node)?
        .send(RequestCluster::new(
            "api",
            &req.address,
            req.target,
            req.body,
            Duration::from_millis(timeout_ms),
        ))
        .await
        .map_err(|_| ApiError::unavailable("the transponder stopped while the request was in flight"))?
        .map_err(|e| ApiError::bad_request("bad_selector", e))?;
    Ok(HttpResponse::Ok().json(outcome))
}

#[derive(Deserialize)]
struct EventsQuery {
    address: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Server-Sent Events: one `data:` line with an envelope per event. A first
/// comment line `: connected` tells the client the stream is live.
/// Bodies (which may carry a deploy's secrets) only for readers that show
/// the API token; the others get `"body_hidden": true`, and the first line
/// says so. A reader that does not read is dropped (see `EventTap`).
async fn events(
    node: web::Data<NodeHandle>,
    token: web::Data<ApiToken>,
    req: HttpRequest,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let EventsQuery { address, kind } = query.into_inner();
    let header = req.headers().get("authorization").and_then(|v| v.to_str().ok());
    let wants = ReaderWants {
        address: address.filter(|a| !a.is_empty()),
        kind: kind.filter(|k| !k.is_empty()),
        bodies: crate::api_token::authorized(&token.0, header),
    };
    let hello: &'static [u8] = if wants.bodies {
        b": connected\n\n"
    } else {
        b": connected; bodies hidden: this reader did not show the node's API token\n\n"
    };
    let live = node
        .tap
        .subscribe(wants)
        .map_err(|full| ApiError::unavailable(full.to_string()))?;
    let hello = futures_util::stream::once(futures_util::future::ready(Bytes::from_static(hello)));
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(hello.chain(live).map(Ok::<_, actix_web::Error>)))
}

#[derive(Deserialize)]
struct TargetQuery {
    target: Option<String>,
}

/// Every targeted node's modules from the status board: one local read,
/// however large the fleet. Nodes whose report is stale, or that are dead,
/// are listed with `stale: true` and an `error`; nodes that left are not
/// listed.
async fn modules(node: web::Data<NodeHandle>, query: web::Query<TargetQuery>) -> Result<HttpResponse, ApiError> {
    let target = parse_target(query.into_inner().target.as_deref().filter(|t| !t.is_empty()))?;
    let members = list_members(&node).await?;
    let views: Vec<NodeView> = node
        .status
        .view(&members, Instant::now())
        .into_iter()
        .filter(|v| v.member != Some(MemberStatus::Left))
        .filter(|v| target.as_ref().is_none_or(|t| t.matches(&v.node, &v.tags)))
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

/// `conjoiner status` and the dashboard: every node with its membership,
/// report age and module health, failing nodes first, and a summary of the
/// whole fleet. `?target=` (the `--target` syntax) narrows the nodes listed,
/// not the summary; `shown` says how many are listed.
async fn status(node: web::Data<NodeHandle>, query: web::Query<TargetQuery>) -> Result<HttpResponse, ApiError> {
    let target = parse_target(query.into_inner().target.as_deref().filter(|t| !t.is_empty()))?;
    let members = list_members(&node).await?;
    let mut views = node.status.view(&members, Instant::now());
    views.sort_by_key(|v| (!v.is_failing(), v.node.clone()));
    let summary = summarize(&views);
    views.retain(|v| target.as_ref().is_none_or(|t| t.matches(&v.node, &v.tags)));
    // A node that has ways in (seeds, or peers it knew) but reaches no one
    // is cut off, not a healthy cluster of one.
    let known =
        crate::discovery::known_peers::load(&node.settings.data_dir.join(crate::discovery::known_peers::PEERS_FILE));
    let alone = !members
        .iter()
        .any(|m| m.name != node.ctx.identity.name && m.status == MemberStatus::Alive);
    let refused = match node.ctx.cluster.status.send(ClusterStatus).await {
        Ok(cluster) => cluster.refused,
        Err(e) => return Err(ApiError::unavailable(format!("the cluster side does not answer: {e}"))),
    };
    let isolated =
        (refused.is_none() && alone && (!node.settings.join.is_empty() || !known.is_empty())).then(|| Isolation {
            seeds: node.settings.join.clone(),
            known_peers: known.len(),
        });
    Ok(HttpResponse::Ok().json(StatusAnswer {
        node: node.ctx.identity.name.clone(),
        cluster: node.ctx.identity.cluster.clone(),
        identity: node.settings.node_key.public().to_string(),
        status_interval_ms: node.settings.monitor.interval.as_millis() as u64,
        isolated,
        refused,
        operator_keys: node
            .settings
            .deployer
            .trust
            .current()
            .keys
            .iter()
            .map(|k| k.describe())
            .collect(),
        module_containment: node.ctx.containment.describe(),
        summary,
        shown: views.len(),
        nodes: views,
    }))
}

/// The dashboard: one static page, embedded in the binary, that polls
/// `/v1/status` and streams `/v1/events`.
async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(DASHBOARD_HTML)
}

const DASHBOARD_HTML: &str = include_str!("../dashboard/index.html");

/// Every actor's state snapshot (what SIGUSR1 logs), as JSON.
async fn debug_state(node: web::Data<NodeHandle>) -> HttpResponse {
    HttpResponse::Ok().json(node.dump_state().await)
}

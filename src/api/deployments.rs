//! The routes of deploys and the deployments table: uploading a package,
//! `POST /v1/deploy` and `/v1/undeploy` (a table entry written, its results
//! gathered), `GET /v1/deployments` (the table with its convergence) and
//! `POST /v1/deployments/{id}/{pause|resume|revert}`.

use super::error::{list_members, parse_target, rejected, ApiError, MAX_REQUEST_TIMEOUT_MS};
use crate::actors::cluster_bus::ListEntries;
use crate::audit::{AuditLine, Decision};
use crate::cluster::identity::cut;
use crate::cluster::protocol::SET_DEPLOYMENTS;
use crate::command::signature::OperatorSignature;
use crate::deploy::command::{audit_line, take_at_origin, Given, OriginRefusal, RolloutAsked};
use crate::deploy::fetch::FetchError;
use crate::deploy::origin::{self, DeployRequest, OriginError};
use crate::deploy::publish;
use crate::deploy::rollout;
use crate::deploy::steer::{Driver, Steer, SteerAction};
use crate::deploy::table::{read_all, Action, Deployment, RolloutPolicy, Row};
use crate::deploy::view::{view, EntryView};
use crate::node::NodeHandle;
use crate::wire::now_ms;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use tracing::{debug, info, warn, Instrument};

/// The default and the largest time a deploy waits for the nodes' results.
pub const DEFAULT_DEPLOY_TIMEOUT_MS: u64 = 120_000;

#[derive(Deserialize)]
pub struct SourceBody {
    url: Option<String>,
    path: Option<String>,
    /// The sha256 of a package this node holds: one uploaded with
    /// `POST /v1/packages`, as the CLI does for a local file.
    package: Option<String>,
}

#[derive(Deserialize)]
pub struct DeployBody {
    module: String,
    source: SourceBody,
    sha256: Option<String>,
    config: Option<Value>,
    target: Option<String>,
    #[serde(flatten)]
    rollout: RolloutAsked,
    #[serde(flatten)]
    given: Given,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
pub struct UndeployBody {
    module: String,
    target: Option<String>,
    #[serde(flatten)]
    rollout: RolloutAsked,
    #[serde(flatten)]
    given: Given,
    timeout_ms: Option<u64>,
}

/// The rollout a body asks for, or a 400.
fn policy_of(asked: &RolloutAsked) -> Result<Option<RolloutPolicy>, ApiError> {
    asked.policy().map_err(|e| rejected("invalid_request", e))
}

fn deploy_timeout(timeout_ms: Option<u64>) -> Result<Duration, ApiError> {
    let ms = timeout_ms.unwrap_or(DEFAULT_DEPLOY_TIMEOUT_MS);
    if ms == 0 || ms > MAX_REQUEST_TIMEOUT_MS {
        return Err(rejected(
            "invalid_request",
            format!("`timeout_ms` must be between 1 and {MAX_REQUEST_TIMEOUT_MS}"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// A deploy refused at the origin, as a 400 with its code (500 for a
/// failure of this node's own).
fn origin_rejected(e: OriginError) -> ApiError {
    match e {
        OriginError::Internal(message) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        // The node's fault, not the caller's: 507, so nobody fixes the package.
        e @ OriginError::Fetch(FetchError::DiskFull(_)) => {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.code(), e.to_string())
        }
        e => rejected(e.code(), e.to_string()),
    }
}

#[derive(Deserialize)]
pub struct UploadQuery {
    sha256: Option<String>,
}

/// `POST /v1/packages`: a package's bytes, streamed into this node's cache
/// (up to `--max-package`, hashed as they come, checked against `?sha256=`
/// when given) and kept only if it is a valid package. The CLI uploads a
/// local package this way, reading it as its own user, so the node never
/// opens a path a caller names (`docs/operations.md`'s list of differences says why).
pub async fn upload_package(
    node: web::Data<NodeHandle>,
    query: web::Query<UploadQuery>,
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let expected = origin::optional_sha256(query.sha256.as_deref()).map_err(origin_rejected)?;
    let limit = node.settings.deployer.max_package_bytes;
    let fetch_rejected = |e| origin_rejected(OriginError::Fetch(e));
    let mut partial = node.deploy.cache.begin(limit).await.map_err(fetch_rejected)?;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| rejected("invalid_request", format!("the upload broke off: {e}")))?;
        partial.write(&chunk).await.map_err(fetch_rejected)?;
    }
    let held = partial.finish(expected.as_deref()).await.map_err(fetch_rejected)?;
    let manifest = origin::held_manifest(&node.deploy, &held)
        .await
        .map_err(origin_rejected)?;
    debug!(sha256 = %held.sha256, size = held.size, module_name = %manifest.name, "package uploaded");
    Ok(HttpResponse::Ok().json(json!({
        "sha256": held.sha256,
        "size": held.size,
        "module": manifest.name,
        "version": manifest.version,
    })))
}

pub async fn deploy(
    node: web::Data<NodeHandle>,
    http: HttpRequest,
    req: web::Json<DeployBody>,
) -> Result<HttpResponse, ApiError> {
    let req = req.into_inner();
    parse_target(req.target.as_deref())?;
    let policy = policy_of(&req.rollout)?;
    let timeout = deploy_timeout(req.timeout_ms)?;
    let request = DeployRequest {
        module: &req.module,
        url: req.source.url.as_deref(),
        path: req.source.path.as_deref(),
        package: req.source.package.as_deref(),
        sha256: req.sha256.as_deref(),
        config: req.config.as_ref(),
    };
    let order = origin::order_for(&node.deploy, &node.ctx.identity.name, &node.settings.deployer, request)
        .await
        .map_err(origin_rejected)?;
    let deployment = Deployment {
        module: order.module,
        target: req.target,
        action: Action::Deploy,
        source: Some(order.source),
        sha256: order.sha256,
        config: order.config,
        ts: 0,
        rollout: None,
        driver: None,
        signature: None,
    };
    run_publish(node.get_ref().clone(), &http, req.given, deployment, policy, timeout).await
}

pub async fn undeploy(
    node: web::Data<NodeHandle>,
    http: HttpRequest,
    req: web::Json<UndeployBody>,
) -> Result<HttpResponse, ApiError> {
    let req = req.into_inner();
    crate::deploy::manifest::check_module_name(&req.module).map_err(|e| rejected("invalid_request", e))?;
    if crate::modules::registry::CORE_MODULES.contains(&req.module.as_str()) {
        return Err(rejected(
            "reserved",
            format!("`{}` is a core module of every node", req.module),
        ));
    }
    parse_target(req.target.as_deref())?;
    let policy = policy_of(&req.rollout)?;
    let deployment = Deployment {
        module: req.module,
        target: req.target,
        action: Action::Undeploy,
        source: None,
        sha256: None,
        config: None,
        ts: 0,
        rollout: None,
        driver: None,
        signature: None,
    };
    run_publish(
        node.get_ref().clone(),
        &http,
        req.given,
        deployment,
        policy,
        deploy_timeout(req.timeout_ms)?,
    )
    .await
}

/// A command this node took as its origin, not yet in the table.
struct Taken {
    id: uuid::Uuid,
    deployment: Deployment,
    /// Its audit line, appended once the table took the entry (as taken)
    /// or did not (as refused, with why): until then it is only checked.
    audit: AuditLine,
}

/// This node, as the origin, checks a command (see [`take_at_origin`]):
/// its id and the entry body to write, or the refusal as an API error
/// (audited, logged, and counted when unauthorized).
async fn take_command(
    node: &NodeHandle,
    given: Given,
    deployment: Deployment,
    policy: Option<&RolloutPolicy>,
) -> Result<Taken, ApiError> {
    let rows = read_all(&table(node).await?).0;
    let me = node.ctx.identity.name.clone();
    let mut line = audit_line(&me, given.id.as_deref(), &deployment, Some(&me), Decision::Refused);
    if line.key.is_none() {
        line.key = given.signature.as_ref().and_then(OperatorSignature::signer_id);
    }
    let taken = {
        let mut recent = node.deploy.recent_commands.lock().unwrap_or_else(|e| e.into_inner());
        take_at_origin(
            &node.settings.deployer.trust.current(),
            &mut recent,
            &rows,
            &node.driver(),
            given,
            deployment,
            policy,
            now_ms(),
        )
    };
    let refusal = match taken {
        Ok((id, deployment)) => {
            line.id = Some(id.to_string());
            return Ok(Taken {
                id,
                deployment,
                audit: line,
            });
        }
        Err(refusal) => refusal,
    };
    line.reason = Some(refusal.to_string());
    node.deploy.audit.append(&line);
    let status = match refusal {
        OriginRefusal::NotAuthorized(_) => {
            node.ctx.metrics.dropped(crate::metrics::DropReason::Unauthorized);
            StatusCode::FORBIDDEN
        }
        OriginRefusal::Stale(_) => StatusCode::CONFLICT,
        OriginRefusal::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    warn!(code = refusal.code(), error = %refusal, "refused a command at its origin");
    Err(ApiError::new(status, refusal.code(), refusal.to_string()))
}

/// The command checked at its origin (see [`take_command`]), and its entry
/// checked as every node will check it, before anything is written. A
/// refusal is audited.
async fn take_checked(
    node: &NodeHandle,
    given: Given,
    deployment: Deployment,
    policy: Option<&RolloutPolicy>,
) -> Result<Taken, ApiError> {
    let mut taken = take_command(node, given, deployment, policy).await?;
    let provisional = crate::cluster::protocol::Entry {
        key: "check".into(),
        version: crate::cluster::protocol::Version {
            clock: now_ms(),
            origin: node.ctx.identity.name.as_str().into(),
        },
        body: taken.deployment.to_body(),
    };
    if let Err(why) = Row::read(&provisional) {
        let code = if why.contains("over the limit") {
            "too_large"
        } else {
            "invalid_request"
        };
        taken.audit.reason = Some(why.clone());
        node.deploy.audit.append(&taken.audit);
        return Err(rejected(code, why));
    }
    Ok(taken)
}

/// What `POST /v1/deploy` and `/v1/undeploy` do with a command, without
/// HTTP and without driving a rollout's later waves (for in-process
/// tests): checked, written, audited, its results gathered; or why not, as
/// `code: message`.
pub async fn take_and_write(
    node: &NodeHandle,
    given: Given,
    deployment: Deployment,
    policy: Option<RolloutPolicy>,
    timeout: Duration,
) -> Result<publish::PublishOutcome, String> {
    let taken = take_checked(node, given, deployment, policy.as_ref())
        .await
        .map_err(|e| format!("{}: {}", e.code, e.message))?;
    write_taken(node, taken, policy, timeout, None).await
}

/// Writes the entry and gathers its results; a rollout is then driven by
/// this node, wave by wave.
async fn publish_and_drive(
    node: &NodeHandle,
    taken: Taken,
    policy: Option<RolloutPolicy>,
    timeout: Duration,
    progress: Option<tokio::sync::mpsc::UnboundedSender<publish::Progress>>,
) -> Result<publish::PublishOutcome, String> {
    let rolling = policy.is_some();
    let outcome = write_taken(node, taken, policy, timeout, progress).await?;
    if rolling {
        node.drive_rollout(outcome.id);
    }
    Ok(outcome)
}

/// Writes a taken command's entry and gathers its results. The command is
/// audited as taken as soon as the table took its entry, else as refused
/// with why.
async fn write_taken(
    node: &NodeHandle,
    taken: Taken,
    policy: Option<RolloutPolicy>,
    timeout: Duration,
    progress: Option<tokio::sync::mpsc::UnboundedSender<publish::Progress>>,
) -> Result<publish::PublishOutcome, String> {
    let audit = publish::OriginAudit {
        log: &node.deploy.audit,
        line: taken.audit,
    };
    publish::publish(
        &node.ctx,
        &node.settings.node_key,
        (taken.id, audit),
        taken.deployment,
        policy,
        timeout,
        progress,
    )
    .await
}

/// Writes the entry and answers its outcome as one JSON object, or, when
/// the client accepts `application/x-ndjson`, streams one line per event as
/// results arrive: `{"event":"start",…}`, `{"event":"result",…}` per node,
/// and `{"event":"done",…outcome}` (or `{"event":"error","error"}`) last.
/// With a rollout, the entry is released to the first wave only, and this
/// node drives the next waves.
async fn run_publish(
    node: NodeHandle,
    http: &HttpRequest,
    given: Given,
    deployment: Deployment,
    policy: Option<RolloutPolicy>,
    timeout: Duration,
) -> Result<HttpResponse, ApiError> {
    let taken = take_checked(&node, given, deployment, policy.as_ref()).await?;
    let streaming = http
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if !streaming {
        let outcome = publish_and_drive(&node, taken, policy, timeout, None)
            .await
            .map_err(ApiError::unavailable)?;
        return Ok(HttpResponse::Ok().json(outcome));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let forward = tx.clone();
    actix_rt::spawn(async move {
        while let Some(p) = progress_rx.recv().await {
            let _ = forward.send(serde_json::to_value(p).unwrap_or(Value::Null));
        }
    });
    actix_rt::spawn(
        async move {
            let last = match publish_and_drive(&node, taken, policy, timeout, Some(progress_tx)).await {
                Ok(outcome) => {
                    let mut v = serde_json::to_value(outcome).unwrap_or(Value::Null);
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert("event".into(), json!("done"));
                    }
                    v
                }
                Err(e) => json!({"event": "error", "error": e}),
            };
            // Let the forwarder flush the last results first.
            tokio::task::yield_now().await;
            let _ = tx.send(last);
        }
        .in_current_span(),
    );
    let lines = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|v| {
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, actix_web::Error>(Bytes::from(line))
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(lines))
}

#[derive(Deserialize)]
pub struct DeploymentsQuery {
    module: Option<String>,
    id: Option<String>,
}

/// `GET /v1/deployments?module=&id=`: the table, each entry with its
/// convergence across the alive nodes it wins on, newest first per module.
pub async fn list(node: web::Data<NodeHandle>, query: web::Query<DeploymentsQuery>) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let entries = table(&node).await?;
    let members = list_members(&node).await?;
    let views = node.status.view(&members, std::time::Instant::now());
    let id = match query.id.as_deref().filter(|i| !i.is_empty()) {
        Some(prefix) => Some(find(&entries, prefix)?.key.to_string()),
        None => None,
    };
    let listed: Vec<EntryView> = view(&entries, &members, &views, now_ms())
        .into_iter()
        .filter(|v| query.module.as_deref().is_none_or(|m| m.is_empty() || v.module == m))
        .filter(|v| id.as_ref().is_none_or(|id| v.id == *id))
        .collect();
    Ok(HttpResponse::Ok().json(listed))
}

/// What a caller gives with a steer: for a signed one (as `conjoiner
/// deployments --operator-key` makes it), its id, time, the node it was
/// made for and the signature; unsigned, nothing (an empty body or `null`).
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct SteerGiven {
    id: Option<String>,
    ts: Option<u64>,
    driver: Option<Driver>,
    signature: Option<OperatorSignature>,
}

/// `POST /v1/deployments/{id}/{pause|resume|revert}`, from any node: the
/// rollout's new state, written as a new version of its entry. This node
/// drives the rollout from then on. On a node that trusts operator keys the
/// command must be signed for this node (see `deploy::steer`); it is
/// audited either way.
pub async fn steer(
    node: web::Data<NodeHandle>,
    path: web::Path<(String, String)>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let (prefix, command) = path.into_inner();
    let Some(action) = SteerAction::parse(&command) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no command `{}`: use pause, resume or revert", cut(&command)),
        ));
    };
    let given: SteerGiven = match std::str::from_utf8(&body).map(str::trim) {
        Ok("" | "null") => SteerGiven::default(),
        _ => serde_json::from_slice(&body)
            .map_err(|e| rejected("invalid_request", format!("the steer command does not read: {e}")))?,
    };
    let entries = table(&node).await?;
    let entry = find(&entries, &prefix)?;
    let row = Row::read(entry).map_err(|e| rejected("invalid_request", e))?;
    let Some(rollout) = &row.deployment.rollout else {
        return Err(rejected(
            "not_a_rollout",
            format!(
                "entry {} was deployed to every node at once; there is no rollout to {command}",
                row.id
            ),
        ));
    };
    let me = node.driver();
    let steer = Steer {
        action,
        entry: row.id.to_string(),
        driver: given.driver.unwrap_or_else(|| me.clone()),
        id: given.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        ts: given.ts.unwrap_or_else(now_ms),
        signature: given.signature,
    };
    let mut line = audit_line(
        &me.node,
        Some(steer.id.as_str()),
        &row.deployment,
        Some(me.node.as_str()),
        Decision::Refused,
    );
    line.kind = action.as_str().to_string();
    line.key = steer.signer_id();
    let taken = {
        let mut recent = node.deploy.recent_commands.lock().unwrap_or_else(|e| e.into_inner());
        steer.take_at_origin(
            &node.settings.deployer.trust.current(),
            &mut recent,
            &row.id,
            row.module(),
            &me.node,
            &me.key,
            now_ms(),
        )
    };
    if let Err(refusal) = taken {
        line.reason = Some(refusal.to_string());
        node.deploy.audit.append(&line);
        node.ctx.metrics.dropped(crate::metrics::DropReason::Unauthorized);
        warn!(entry = %row.id, %command, error = %refusal, "refused to steer a rollout");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            refusal.code(),
            refusal.to_string(),
        ));
    }
    let next = match rollout::steer(rollout, steer) {
        Ok(next) => next,
        Err(e) => {
            line.reason = Some(e.clone());
            node.deploy.audit.append(&line);
            return Err(rejected("invalid_state", e));
        }
    };
    info!(entry = %row.id, %command, from = rollout.state.as_str(), to = next.state.as_str(), "steering a rollout");
    let written = rollout::write_rollout(&node.ctx, &node.settings.node_key, &row, next).await;
    if let Err(e) = &written {
        line.reason = Some(e.clone());
    } else {
        line.decision = Decision::Taken;
    }
    node.deploy.audit.append(&line);
    written.map_err(ApiError::unavailable)?;
    if action == SteerAction::Resume {
        if let Ok(id) = uuid::Uuid::parse_str(&row.id) {
            node.drive_rollout(id);
        }
    }
    let entries = table(&node).await?;
    let members = list_members(&node).await?;
    let views = node.status.view(&members, std::time::Instant::now());
    let now = view(&entries, &members, &views, now_ms())
        .into_iter()
        .find(|v| *v.id == *row.id);
    Ok(HttpResponse::Ok().json(now))
}

/// Every entry of the deployments table this node holds.
async fn table(node: &NodeHandle) -> Result<Vec<std::sync::Arc<crate::cluster::protocol::Entry>>, ApiError> {
    node.ctx
        .cluster
        .list_entries
        .send(ListEntries(SET_DEPLOYMENTS))
        .await
        .map_err(|_| ApiError::unavailable("the cluster side is not running"))
}

/// The entry an id or a prefix of it names; a 404 if none does.
fn find<'a>(
    entries: &'a [std::sync::Arc<crate::cluster::protocol::Entry>],
    prefix: &str,
) -> Result<&'a std::sync::Arc<crate::cluster::protocol::Entry>, ApiError> {
    crate::deploy::view::find(entries, prefix).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "not_found", e))
}

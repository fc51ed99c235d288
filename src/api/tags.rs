//! `GET /v1/tags` and `POST /v1/tags`: this node's tags, and changing
//! them at run time (`conjoiner tags --set K=V --delete K`).

use super::error::{rejected, ApiError};
use crate::audit::{AuditLine, Decision};
use crate::command::gate::NOT_AUTHORIZED;
use crate::command::tag_change::{TagChange, TAGS_SCOPE};
use crate::node::NodeHandle;
use crate::tags::TagChanges;
use crate::wire::now_ms;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;
use tracing::{info, warn};

/// The tags now, those given at start, and the changes made since.
pub async fn show(node: web::Data<NodeHandle>) -> HttpResponse {
    let changes = TagChanges::load(&node.settings.data_dir).ok();
    HttpResponse::Ok().json(json!({
        "node": node.ctx.identity.name,
        "tags": node.ctx.identity.tags.get(),
        "given": node.settings.given_tags.lock().await.clone(),
        "changes": changes,
    }))
}

/// Sets and deletes tags; answers the tags now. The change is a command:
/// on a node that trusts operator keys it must be signed (see
/// `command::tag_change`), and each one, carried out or refused, is in the
/// audit.
pub async fn change(node: web::Data<NodeHandle>, body: web::Json<TagChange>) -> Result<HttpResponse, ApiError> {
    let change = body.into_inner();
    change.check().map_err(|e| rejected(e.code, e.message))?;
    let me = node.ctx.identity.name.clone();
    let trust = node.settings.deployer.trust.current();
    let changed = node
        .change_tags(change.set.clone(), change.delete.clone(), |before, after| {
            let mut seen = node.deploy.recent_commands.lock().unwrap_or_else(|e| e.into_inner());
            change
                .authorize(&trust, &mut seen, &me, before, after, now_ms())
                .map(|_| ())
        })
        .await;
    let (decision, status, reason) = match &changed {
        Ok(_) => (Decision::CarriedOut, Some(change.describe()), None),
        Err(refusal) => (
            Decision::Refused,
            Some(change.describe()),
            Some(format!("{}: {}", refusal.code, refusal.message)),
        ),
    };
    node.deploy.audit.append(&AuditLine {
        id: (!change.id.is_empty()).then(|| change.id.clone()),
        origin: Some(me.to_string()),
        key: change.signer_id(),
        status,
        reason,
        ..AuditLine::of(&me, "tags", TAGS_SCOPE, decision)
    });
    match changed {
        Ok(tags) => {
            info!(change = %change.describe(), key = change.signer_id().as_deref().unwrap_or("-"),
                "tags command carried out");
            Ok(HttpResponse::Ok().json(json!({"node": me, "tags": tags})))
        }
        Err(refusal) => {
            warn!(code = refusal.code, reason = %refusal.message, change = %change.describe(),
                "tags command refused");
            let status = match refusal.code {
                NOT_AUTHORIZED => {
                    node.ctx.metrics.dropped(crate::metrics::DropReason::Unauthorized);
                    StatusCode::FORBIDDEN
                }
                "failed" => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            Err(ApiError::new(status, refusal.code, refusal.message))
        }
    }
}

//! `GET /v1/tags` and `POST /v1/tags`: this node's tags, and changing
//! them at run time (`conjoiner tags --set K=V --delete K`).

use super::error::{rejected, ApiError};
use crate::node::NodeHandle;
use crate::tags::{check_key, parse_tag, TagChanges};
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

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

#[derive(Deserialize)]
pub struct ChangeBody {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    delete: Vec<String>,
}

/// Sets and deletes tags; answers the tags now.
pub async fn change(node: web::Data<NodeHandle>, body: web::Json<ChangeBody>) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.set.is_empty() && body.delete.is_empty() {
        return Err(rejected("invalid_request", "give tags to `set` or to `delete`"));
    }
    for (k, v) in &body.set {
        parse_tag(&format!("{k}={v}")).map_err(|e| rejected("invalid_tag", e))?;
    }
    for k in &body.delete {
        check_key(k).map_err(|e| rejected("invalid_tag", e))?;
        if body.set.contains_key(k) {
            return Err(rejected("invalid_tag", format!("tag `{k}` is both set and deleted")));
        }
    }
    let tags = node
        .change_tags(body.set, body.delete)
        .await
        .map_err(|e| rejected("invalid_tag", e))?;
    Ok(HttpResponse::Ok().json(json!({"node": node.ctx.identity.name, "tags": tags})))
}

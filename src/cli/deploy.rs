//! `conjoiner deploy` and `conjoiner undeploy`: roll a module out to (or
//! remove it from) the targeted nodes, showing each node's result as it
//! arrives: a progress display on a terminal, plain lines when piped.
//! Exit codes: 0 when every node succeeded, 1 when every node that answered
//! failed (none missing or skipped), 3 when only some failed or any was
//! missing or skipped.

use super::client::ApiClient;
use super::{parse_duration, read_targets, CliError, EXIT_ERROR, EXIT_OK, EXIT_PARTIAL};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The module's name (the `name` in its `mod.json`).
    pub module: String,
    /// The package: an http(s):// or file:// URL each node fetches itself
    /// (file:// only from its `--package-dir`), or a path on this host (a
    /// package, or a module folder to package), which is uploaded to the
    /// local node and offered to the others over the cluster's encrypted
    /// links (no HTTP server needed).
    #[arg(long)]
    pub from: String,
    /// The package's expected sha256 (always checked for a path).
    #[arg(long)]
    pub sha256: Option<String>,
    /// Config merged over the manifest's `config`: JSON, or `@FILE`.
    #[arg(long)]
    pub config: Option<String>,
    #[command(flatten)]
    pub rollout: RolloutArgs,
}

#[derive(Debug, clap::Args)]
pub struct UndeployArgs {
    /// The module to stop and remove.
    pub module: String,
    #[command(flatten)]
    pub rollout: RolloutArgs,
}

/// Which nodes, how many at a time, and how long each may take.
#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// Only nodes matching this selector (repeat for OR). Default: every node.
    #[arg(long)]
    pub target: Vec<String>,
    /// Act on at most N nodes at a time (a rolling window, in name order).
    #[arg(long)]
    pub batch: Option<usize>,
    /// With --batch: go on to further nodes after a failure.
    #[arg(long)]
    pub continue_on_error: bool,
    /// How long one node may take.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl RolloutArgs {
    /// Adds the rollout fields to an API request body.
    fn fill(&self, body: &mut Value) -> Result<(), CliError> {
        body["target"] = json!(read_targets(&self.target)?);
        body["batch"] = json!(self.batch);
        body["continue_on_error"] = json!(self.continue_on_error);
        body["timeout_ms"] = json!(self.timeout.as_millis() as u64);
        Ok(())
    }
}

pub async fn deploy(http: &str, json_out: bool, args: DeployArgs) -> Result<i32, CliError> {
    // A module folder is packaged first, into a temporary file the node
    // reads before it answers.
    let built = if Path::new(&args.from).is_dir() {
        let out = std::env::temp_dir().join(format!("conjoiner-{}-{}.tar.gz", args.module, std::process::id()));
        let (manifest, sha) = crate::deploy::package::build(Path::new(&args.from), &out).map_err(CliError::error)?;
        if !json_out {
            eprintln!(
                "packaged {} {} from {} (sha256 {sha})",
                manifest.name, manifest.version, args.from
            );
        }
        Some(TempFile(out))
    } else {
        None
    };
    let from = built.as_ref().map_or(args.from.clone(), |t| t.0.display().to_string());
    let source = source_of(http, &from, args.sha256.as_deref()).await?;
    let config = match args.config.as_deref() {
        None => None,
        Some(text) => Some(read_config(text)?),
    };
    let mut body = json!({
        "module": args.module,
        "source": source,
        "sha256": args.sha256,
        "config": config,
    });
    args.rollout.fill(&mut body)?;
    rollout(http, json_out, "/v1/deploy", &body).await
}

pub async fn undeploy(http: &str, json_out: bool, args: UndeployArgs) -> Result<i32, CliError> {
    let mut body = json!({"module": args.module});
    args.rollout.fill(&mut body)?;
    rollout(http, json_out, "/v1/undeploy", &body).await
}

/// Removed when dropped.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `--from`: URLs go as they are; a path is read by this process, as its
/// user, and uploaded to the local node, which holds it and offers it to
/// the targeted nodes (the node itself never opens a path a caller names).
async fn source_of(http: &str, from: &str, sha256: Option<&str>) -> Result<Value, CliError> {
    if from.contains("://") {
        return Ok(json!({"url": from}));
    }
    let file = tokio::fs::File::open(from).await.map_err(|e| {
        CliError::usage(format!(
            "--from {from}: {e} (give a package path, a module folder, or an http/https/file URL)"
        ))
    })?;
    let query: Vec<(&str, &str)> = sha256.map(|sha| ("sha256", sha)).into_iter().collect();
    let held: Value = ApiClient::new(http).post_file("/v1/packages", &query, file).await?;
    let sha = held.get("sha256").and_then(Value::as_str).unwrap_or_default();
    Ok(json!({"package": sha}))
}

fn read_config(text: &str) -> Result<Value, CliError> {
    let text = match text.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).map_err(|e| CliError::usage(format!("--config @{file}: {e}")))?,
        None => text.to_string(),
    };
    let value: Value =
        serde_json::from_str(&text).map_err(|e| CliError::usage(format!("--config is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(CliError::usage("--config must be a JSON object"));
    }
    Ok(value)
}

/// Shows results as they stream in (progress bar on a TTY), then a summary.
async fn rollout(http: &str, json_out: bool, path: &str, body: &Value) -> Result<i32, CliError> {
    let client = ApiClient::new(http);
    let response = client.post_stream(path, body, "application/x-ndjson").await?;
    let interactive = !json_out && std::io::stderr().is_terminal();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut lines = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut done: Option<Value> = None;
    while let Some(chunk) = lines.next().await {
        let chunk = chunk.map_err(|e| CliError::error(format!("the node's answer broke off: {e}")))?;
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            match event["event"].as_str() {
                Some("start") => {
                    let expected = event["expected"].as_array().map_or(0, Vec::len);
                    if interactive {
                        let b = indicatif::ProgressBar::new(expected as u64);
                        b.set_style(
                            indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} nodes {msg}")
                                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                        b.enable_steady_tick(Duration::from_millis(120));
                        bar = Some(b);
                    } else if !json_out {
                        eprintln!("{expected} node(s) targeted");
                    }
                }
                Some("result") if !json_out => {
                    let text = describe(&event);
                    match &bar {
                        Some(b) => {
                            b.println(text);
                            b.inc(1);
                        }
                        None => println!("{text}"),
                    }
                }
                Some("done") => done = Some(event),
                Some("error") => {
                    if let Some(b) = &bar {
                        b.finish_and_clear();
                    }
                    let error = event["error"].as_str().unwrap_or("unknown error");
                    return Err(CliError::error(error.to_string()));
                }
                _ => {}
            }
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let mut outcome = done.ok_or_else(|| CliError::error("the node's answer ended before the rollout was done"))?;
    if let Some(obj) = outcome.as_object_mut() {
        obj.remove("event");
    }
    summarize(json_out, &outcome)
}

fn describe(result: &Value) -> String {
    let node = result["node"].as_str().unwrap_or("?");
    let status = result["status"].as_str().unwrap_or("?");
    let ms = result["elapsed_ms"].as_u64().unwrap_or(0);
    let mut text = format!("{node}: {status}");
    if let Some(version) = result["version"].as_str() {
        text.push_str(&format!(" {version}"));
    }
    text.push_str(&format!(" ({ms} ms)"));
    if let Some(error) = result["error"].as_str() {
        let code = result["code"].as_str().unwrap_or("error");
        text.push_str(&format!(": {error} [{code}]"));
    }
    text
}

fn names(outcome: &Value, key: &str) -> Vec<String> {
    outcome[key]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn summarize(json_out: bool, outcome: &Value) -> Result<i32, CliError> {
    let results = outcome["results"].as_array().cloned().unwrap_or_default();
    let missing = names(outcome, "missing");
    let skipped = names(outcome, "skipped");
    let failed = results.iter().filter(|r| r["status"] == "failed").count();
    if json_out {
        println!("{}", serde_json::to_string_pretty(outcome).unwrap_or_default());
    } else {
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for r in &results {
            *counts.entry(r["status"].as_str().unwrap_or("?")).or_default() += 1;
        }
        let mut parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        if !missing.is_empty() {
            parts.push(format!("{} missing ({})", missing.len(), missing.join(", ")));
        }
        if !skipped.is_empty() {
            parts.push(format!(
                "{} skipped after a failure ({})",
                skipped.len(),
                skipped.join(", ")
            ));
        }
        eprintln!(
            "{}",
            if parts.is_empty() {
                "no node matched the target".into()
            } else {
                parts.join(", ")
            }
        );
    }
    if results.is_empty() && missing.is_empty() && skipped.is_empty() {
        return Err(CliError::error("no alive node matches the target"));
    }
    Ok(if failed == 0 && missing.is_empty() && skipped.is_empty() {
        EXIT_OK
    } else if failed == results.len() && missing.is_empty() && skipped.is_empty() {
        EXIT_ERROR
    } else {
        EXIT_PARTIAL
    })
}

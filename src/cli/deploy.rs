//! `conjoiner deploy` and `conjoiner undeploy`: record an entry in the
//! deployments table (so nodes that are down, cut off or join later carry
//! it out too), and show each node's result as it arrives: a progress
//! display on a terminal, plain lines when piped. With a rollout
//! (`--canary`, `--batch`), the first wave's results, then the rollout's
//! waves until it is done, reverted or paused.
//! Exit codes: 0 when every targeted node succeeded, 1 when every node that
//! answered failed, 3 when only some did, or any was missing, not alive, or
//! a rollout stopped.

use super::client::ApiClient;
use super::members::visible;
use super::{parse_duration, read_targets, CliError, EXIT_ERROR, EXIT_OK, EXIT_PARTIAL};
use crate::command::operator_key::OperatorSecret;
use crate::deploy::command::{command_bytes, RolloutAsked};
use crate::deploy::order::OrderSource;
use crate::deploy::package::parse_sha256;
use crate::deploy::table::{Action, Deployment};
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
    #[command(flatten)]
    pub sign: SignArgs,
}

#[derive(Debug, clap::Args)]
pub struct UndeployArgs {
    /// The module to stop and remove.
    pub module: String,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    #[command(flatten)]
    pub sign: SignArgs,
}

/// Signing the command with an operator key.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// Sign the command with this private operator key (from `conjoiner
    /// keygen --operator`); nodes that trust operator keys carry out only
    /// signed commands. A URL deploy then needs --sha256: the signature
    /// names the exact package.
    #[arg(long, env = "CONJOINER_OPERATOR_KEY", value_name = "FILE")]
    pub operator_key: Option<std::path::PathBuf>,
}

impl SignArgs {
    /// Signs the API request `body` (a deploy or an undeploy, complete but
    /// for its signature) as the node at `http` will check it: adds `id`,
    /// `ts` and `signature`, and for a rollout the node that drives it
    /// (`driver`: that node, asked for its name and key).
    async fn sign(&self, http: &str, body: &mut Value, action: Action) -> Result<(), CliError> {
        let Some(file) = &self.operator_key else {
            return Ok(());
        };
        let secret = OperatorSecret::load(file).map_err(CliError::usage)?;
        let policy = serde_json::from_value::<RolloutAsked>(body.clone())
            .map_err(|e| CliError::usage(e.to_string()))?
            .policy()
            .map_err(CliError::usage)?;
        let text = |v: &Value| v.as_str().map(str::to_string);
        let url = text(&body["source"]["url"]);
        let sha256 = match (action, text(&body["source"]["package"]).or(text(&body["sha256"]))) {
            (Action::Undeploy, _) => None,
            (Action::Deploy, Some(sha)) => Some(parse_sha256(&sha).map_err(CliError::usage)?),
            (Action::Deploy, None) => {
                return Err(CliError::usage(
                    "--operator-key with a URL needs --sha256: the signature names the exact package",
                ))
            }
        };
        let driver = match policy {
            Some(_) => Some(ApiClient::new(http).driver().await?),
            None => None,
        };
        let deployment = Deployment {
            module: text(&body["module"]).unwrap_or_default(),
            target: text(&body["target"]),
            action,
            source: url.map(|url| OrderSource {
                url: Some(url),
                peer: None,
                size: None,
            }),
            sha256,
            config: Some(body["config"].clone()).filter(|c| !c.is_null()),
            ts: crate::wire::now_ms(),
            rollout: None,
            driver,
            signature: None,
        };
        let id = uuid::Uuid::now_v7().to_string();
        let bytes = command_bytes(&id, &deployment, policy.as_ref());
        body["id"] = json!(id);
        body["ts"] = json!(deployment.ts);
        body["signature"] = json!({"key": secret.public().to_string(), "sig": secret.sign(&bytes)});
        if let Some(driver) = &deployment.driver {
            body["driver"] = json!(driver);
        }
        Ok(())
    }
}

/// Which nodes, in which waves, and how long to wait for results.
#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// Only nodes matching this selector (repeat for OR). Default: every node.
    #[arg(long)]
    pub target: Vec<String>,
    /// Roll out in waves: the first wave, as a number of nodes (3) or a
    /// share of the targeted ones (10%).
    #[arg(long)]
    pub canary: Option<String>,
    /// Roll out in waves of this many nodes (3) or this share (25%) after
    /// the first (which is this size too without --canary).
    #[arg(long)]
    pub batch: Option<String>,
    /// How long each wave must stay healthy before the next one.
    #[arg(long, value_parser = parse_duration)]
    pub health_window: Option<Duration>,
    /// How many released nodes may fail (3 or 10%) before the rollout is
    /// reverted. Default 0.
    #[arg(long)]
    pub max_failed: Option<String>,
    /// Pause the rollout on too many failures instead of reverting it.
    #[arg(long)]
    pub no_revert: bool,
    /// How long to wait for the nodes' results (and for each wave).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl RolloutArgs {
    /// Adds the target and rollout fields to an API request body.
    fn fill(&self, body: &mut Value) -> Result<(), CliError> {
        body["target"] = json!(read_targets(&self.target)?);
        body["canary"] = json!(self.canary);
        body["batch"] = json!(self.batch);
        body["health_window_ms"] = json!(self.health_window.map(|d| d.as_millis() as u64));
        body["max_failed"] = json!(self.max_failed);
        if self.no_revert {
            body["revert"] = json!(false);
        }
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
    args.sign.sign(http, &mut body, Action::Deploy).await?;
    publish(http, json_out, "/v1/deploy", &body, args.rollout.timeout).await
}

pub async fn undeploy(http: &str, json_out: bool, args: UndeployArgs) -> Result<i32, CliError> {
    let mut body = json!({"module": args.module});
    args.rollout.fill(&mut body)?;
    args.sign.sign(http, &mut body, Action::Undeploy).await?;
    publish(http, json_out, "/v1/undeploy", &body, args.rollout.timeout).await
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

/// Shows results as they stream in (progress bar on a TTY), then a
/// summary; a rollout is followed wave by wave.
async fn publish(http: &str, json_out: bool, path: &str, body: &Value, timeout: Duration) -> Result<i32, CliError> {
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
                    if !json_out {
                        for line in absent_lines(&event) {
                            match &bar {
                                Some(b) => b.println(line),
                                None => eprintln!("{line}"),
                            }
                        }
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
    let mut outcome = done.ok_or_else(|| CliError::error("the node's answer ended before the results were in"))?;
    if let Some(obj) = outcome.as_object_mut() {
        obj.remove("event");
    }
    if outcome["rollout"].is_object() {
        let code = summarize(false, &outcome, json_out)?;
        return follow(http, json_out, outcome, timeout, code).await;
    }
    summarize(json_out, &outcome, json_out)
}

/// Lines for the targeted members that are not alive now, and the nodes a
/// rollout holds back.
fn absent_lines(start: &Value) -> Vec<String> {
    let mut lines: Vec<String> = start["absent"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            visible(&format!(
                "{}: {}: {}",
                a["node"].as_str().unwrap_or("?"),
                a["member"].as_str().unwrap_or("?"),
                a["note"].as_str().unwrap_or("")
            ))
            .into_owned()
        })
        .collect();
    let later = start["later"].as_array().map_or(0, Vec::len);
    if later > 0 {
        lines.push(format!("{later} more node(s) in later waves of the rollout"));
    }
    lines
}

/// One node's result as a line. Its text comes from the node (and its
/// module), so control characters are written out.
fn describe(result: &Value) -> String {
    visible(&describe_raw(result)).into_owned()
}

fn describe_raw(result: &Value) -> String {
    let node = result["node"].as_str().unwrap_or("?");
    let status = result["status"].as_str().unwrap_or("?");
    let ms = result["elapsed_ms"].as_u64().unwrap_or(0);
    let mut text = format!("{node}: {status}");
    if let Some(version) = result["version"].as_str() {
        text.push_str(&format!(" {version}"));
    }
    text.push_str(&format!(" ({ms} ms)"));
    if let Some(error) = result["error"].as_str() {
        match result["code"].as_str() {
            Some(code) => text.push_str(&format!(": {error} [{code}]")),
            None => text.push_str(&format!(": {error}")),
        }
    }
    text
}

fn names(outcome: &Value, key: &str) -> Vec<String> {
    outcome[key]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Prints the outcome (as JSON with `json_out`, else a summary line unless
/// `quiet`) and answers the exit code.
fn summarize(json_out: bool, outcome: &Value, quiet: bool) -> Result<i32, CliError> {
    let results = outcome["results"].as_array().cloned().unwrap_or_default();
    let missing = names(outcome, "missing");
    let absent = outcome["absent"].as_array().map_or(0, Vec::len);
    let later = outcome["later"].as_array().map_or(0, Vec::len);
    let ok = |r: &&Value| {
        ["deployed", "unchanged", "undeployed", "not_installed"].contains(&r["status"].as_str().unwrap_or(""))
    };
    let failed = results.iter().filter(|r| !ok(r)).count();
    if json_out {
        println!("{}", serde_json::to_string_pretty(outcome).unwrap_or_default());
    } else if !quiet {
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for r in &results {
            *counts.entry(r["status"].as_str().unwrap_or("?")).or_default() += 1;
        }
        let mut parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        if !missing.is_empty() {
            parts.push(format!(
                "{} missing ({}): they hold the entry and carry it out on their own",
                missing.len(),
                visible(&missing.join(", "))
            ));
        }
        if absent > 0 {
            parts.push(format!("{absent} not alive: they carry it out when they return"));
        }
        eprintln!(
            "{}",
            if parts.is_empty() && later == 0 {
                "no node matched the target".into()
            } else if parts.is_empty() {
                "the first wave released no node yet".into()
            } else {
                parts.join(", ")
            }
        );
    }
    if results.is_empty() && missing.is_empty() && absent == 0 && later == 0 {
        return Err(CliError::error("no node matches the target"));
    }
    Ok(if failed == 0 && missing.is_empty() && absent == 0 {
        EXIT_OK
    } else if failed == results.len() && missing.is_empty() && absent == 0 {
        EXIT_ERROR
    } else {
        EXIT_PARTIAL
    })
}

/// Follows the rollout of `outcome`'s entry until it is done, reverted or
/// paused, printing each new wave (with `json_out`, the outcome once at
/// the end, with the rollout as it ended and the entry's convergence);
/// answers the exit code.
async fn follow(
    http: &str,
    json_out: bool,
    mut outcome: Value,
    wave_timeout: Duration,
    first: i32,
) -> Result<i32, CliError> {
    let client = ApiClient::new(http);
    let id = outcome["id"].as_str().unwrap_or_default().to_string();
    let mut seen: Option<(u32, String)> = None;
    let mut changed = std::time::Instant::now();
    loop {
        let listed: Vec<Value> = client.get("/v1/deployments", &[("id", &id)]).await?;
        let Some(entry) = listed.into_iter().next() else {
            return Err(CliError::error(format!(
                "entry {id} is gone from the deployments table"
            )));
        };
        let rollout = &entry["rollout"];
        let wave = rollout["wave"].as_u64().unwrap_or(0) as u32;
        let state = rollout["state"].as_str().unwrap_or("?").to_string();
        if seen.as_ref() != Some(&(wave, state.clone())) {
            changed = std::time::Instant::now();
            if !json_out {
                let released = entry["nodes"].as_u64().unwrap_or(0);
                let later = entry["later"].as_u64().unwrap_or(0);
                eprintln!(
                    "rollout {}: wave {wave}, {state}, released to {released} of {} alive targeted node(s); converged {}/{released}",
                    crate::deploy::view::short_id(&id),
                    released + later,
                    entry["converged"],
                );
                if let Some(reason) = rollout["reason"].as_str() {
                    eprintln!("  {}", visible(reason));
                }
            }
            seen = Some((wave, state.clone()));
        }
        let code = match state.as_str() {
            "done" if entry["converged"] == entry["nodes"] && first == EXIT_OK => Some(EXIT_OK),
            "done" | "reverted" | "paused" => Some(EXIT_PARTIAL),
            _ => None,
        };
        if let Some(code) = code {
            if json_out {
                outcome["rollout"] = rollout.clone();
                for key in ["converged", "nodes", "behind"] {
                    outcome[key] = entry[key].clone();
                }
                println!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default());
            }
            return Ok(code);
        }
        let window = Duration::from_millis(rollout["policy"]["health_window_ms"].as_u64().unwrap_or(0));
        if changed.elapsed() > window + wave_timeout {
            return Err(CliError::error(format!(
                "rollout {id} has not moved for {} s; it goes on without this command (`conjoiner deployments` shows it)",
                changed.elapsed().as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's result and an absent member's note are the peer's text:
    /// printed whole, with control characters written out.
    #[test]
    fn results_and_absent_notes_write_control_characters_out() {
        let line = describe(&json!({"node": "n1", "status": "failed", "version": "1.0",
            "elapsed_ms": 12, "error": "no\u{1b}]0;pwned\u{7}", "code": "bad_package"}));
        assert_eq!(line, "n1: failed 1.0 (12 ms): no\\u{1b}]0;pwned\\u{7} [bad_package]");
        let lines = absent_lines(&json!({"absent": [{"node": "n\r2", "member": "dead", "note": "gone"}],
            "later": ["n3"]}));
        assert_eq!(
            lines,
            ["n\\r2: dead: gone", "1 more node(s) in later waves of the rollout"]
        );
    }
}

//! `conjoiner status`: the fleet on one screen. Every node with its
//! membership (and since when), report age and module health, failing nodes
//! first, failing modules named, and a summary line. Exit code 3 when
//! anything is failing, or when the node is isolated (it has seeds or
//! known peers and reaches none of them).

use super::client::ApiClient;
use super::members::print_table;
use super::modules::short_json;
use super::{CliError, EXIT_OK, EXIT_PARTIAL};
use serde_json::Value;

pub async fn run(http: &str, json_out: bool) -> Result<i32, CliError> {
    let status: Value = ApiClient::new(http).get("/v1/status", &[]).await?;
    let failing = status["summary"]["failing_nodes"].as_u64().unwrap_or(0);
    let isolated = !status["isolated"].is_null();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
    } else {
        print_screen(&status);
        if isolated {
            let seeds: Vec<&str> = status["isolated"]["seeds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let known = status["isolated"]["known_peers"].as_u64().unwrap_or(0);
            eprintln!(
                "isolated: {} reaches none of its seeds ({}) or {known} known peers; it keeps trying \
                 (is the cluster key the same? is the network open?)",
                status["node"].as_str().unwrap_or("this node"),
                if seeds.is_empty() {
                    "none".to_string()
                } else {
                    seeds.join(", ")
                },
            );
        }
    }
    Ok(if failing == 0 && !isolated {
        EXIT_OK
    } else {
        EXIT_PARTIAL
    })
}

fn age(ms: &Value) -> String {
    match ms.as_u64() {
        None => "never".into(),
        Some(ms) if ms < 10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => super::modules::uptime(ms),
    }
}

fn print_screen(status: &Value) {
    let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
    let rows: Vec<[String; 7]> = nodes
        .iter()
        .map(|n| {
            let modules = n["modules"].as_array().map_or(0, Vec::len);
            let failing = n["failing"].as_array().map_or(0, Vec::len);
            let load = n["host"]["load"][0].as_f64().map_or("-".into(), |l| format!("{l:.2}"));
            [
                n["node"].as_str().unwrap_or("?").to_string(),
                n["health"].as_str().unwrap_or("?").to_string(),
                n["member"].as_str().unwrap_or("unknown").to_string(),
                age(&n["member_since_ms"]),
                age(&n["status_age_ms"]),
                format!("{}/{modules} ok", modules - failing),
                load,
            ]
        })
        .collect();
    print_table(
        ["NODE", "HEALTH", "MEMBER", "SINCE", "REPORT", "MODULES", "LOAD"],
        &rows,
    );

    let mut problems = Vec::new();
    for n in &nodes {
        let name = n["node"].as_str().unwrap_or("?");
        if let Some(error) = n["error"].as_str() {
            problems.push(format!("  {name}: {error}"));
        }
        for m in n["modules"].as_array().into_iter().flatten() {
            let failing = n["failing"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == &m["name"]));
            if failing {
                let why = m["status_error"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| m["last_exit"].as_str().map(str::to_string))
                    .unwrap_or_else(|| short_json(&m["status"], 60));
                problems.push(format!(
                    "  {name}/{}: {} ({why})",
                    m["name"].as_str().unwrap_or("?"),
                    m["health"].as_str().unwrap_or("?"),
                ));
            }
        }
    }
    if !problems.is_empty() {
        println!("\nfailing:");
        for p in problems {
            println!("{p}");
        }
    }
    let s = &status["summary"];
    println!(
        "\n{} nodes: {} ok, {} failing; {} modules, {} failing (seen from {})",
        s["nodes"],
        s["ok"],
        s["failing_nodes"],
        s["modules"],
        s["failing_modules"],
        status["node"].as_str().unwrap_or("?"),
    );
}

//! `make sim N=…`: runs the cluster core of N nodes on the simulator's
//! virtual network and prints what it measured (see `conjoiner::sim`).
//!
//! Usage: `conjoiner-sim [N[,N…]] [--seed S] [--idle SECS] [--loss-secs SECS]
//! [--overload-secs SECS] [--table ENTRIES] [--keyed] [--liar SECS]`.
//! Writes `target/sim/sim-N.json` per N. `--keyed` gives every node an
//! identity key; `--liar SECS` (keyed unless `--unkeyed`) has one node lie
//! about all others for that long.

use conjoiner::sim::scenario::{run, table, ScenarioConfig};
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut sizes: Vec<usize> = Vec::new();
    let mut seed = 1u64;
    let mut idle = None;
    let mut loss = None;
    let mut overload = None;
    let mut table_entries = None;
    let mut keyed = None;
    let mut liar = Duration::ZERO;
    while let Some(arg) = args.next() {
        let mut value = |what: &str| -> f64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage(&format!("{what} needs a number")))
        };
        match arg.as_str() {
            "--seed" => seed = value("--seed") as u64,
            "--idle" => idle = Some(Duration::from_secs_f64(value("--idle"))),
            "--loss-secs" => loss = Some(Duration::from_secs_f64(value("--loss-secs"))),
            "--overload-secs" => overload = Some(Duration::from_secs_f64(value("--overload-secs"))),
            "--table" => table_entries = Some(value("--table") as usize),
            "--liar" => liar = Duration::from_secs_f64(value("--liar")),
            "--keyed" => keyed = Some(true),
            "--unkeyed" => keyed = Some(false),
            "-h" | "--help" => usage(""),
            list => {
                for n in list.split(',') {
                    match n.trim().parse::<usize>() {
                        Ok(n) if n >= 3 => sizes.push(n),
                        _ => usage(&format!("`{n}` is not a node count of 3 or more")),
                    }
                }
            }
        }
    }
    if sizes.is_empty() {
        sizes.push(100);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("sim");
    std::fs::create_dir_all(&dir).expect("create target/sim");
    let mut reports = Vec::new();
    for n in sizes {
        let mut config = ScenarioConfig::new(n);
        config.seed = seed;
        if let Some(d) = idle {
            config.idle = d;
        }
        if let Some(d) = loss {
            config.loss_duration = d;
        }
        if let Some(d) = overload {
            config.overload_duration = d;
        }
        if let Some(entries) = table_entries {
            config.table.entries = entries;
        }
        config.liar = liar;
        config.keyed = keyed.unwrap_or(!liar.is_zero());
        let started = std::time::Instant::now();
        let report = run(&config, |step| {
            eprintln!("[N={n} {:>6.1}s {}] {step}", started.elapsed().as_secs_f64(), memory())
        });
        let file = dir.join(format!("sim-{n}.json"));
        std::fs::write(&file, serde_json::to_string_pretty(&report).expect("report serializes"))
            .expect("write the report");
        eprintln!("written: {}", file.display());
        reports.push(report);
    }
    println!();
    println!("{}", table(&reports));
}

/// The simulator's own resident and peak memory, so a run shows where its
/// memory goes as the node count grows.
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or_else(|| "?".to_string(), |kib| format!("{} MiB", kib / 1024))
    };
    format!("rss {} peak {}", field("VmRSS:"), field("VmHWM:"))
}

fn usage(error: &str) -> ! {
    if !error.is_empty() {
        eprintln!("conjoiner-sim: {error}");
    }
    eprintln!("usage: conjoiner-sim [N[,N...]] [--seed S] [--idle SECS] [--loss-secs SECS] [--overload-secs SECS] [--table ENTRIES] [--keyed|--unkeyed] [--liar SECS]");
    std::process::exit(2);
}

//! A cluster of real nodes (their actors, cores, Deployers and Monitors)
//! on the in-memory network, in one process, with the helpers the desired
//! state and operator tests share: deploy and undeploy as an origin does,
//! and wait for nodes to converge.

#![allow(dead_code)] // each test binary uses its own part

use conjoiner::actors::cluster_bus::{ListEntries, ListMembers, MemberStatus};
use conjoiner::actors::monitor::MonitorConfig;
use conjoiner::api::deployments::take_and_write;
use conjoiner::cluster::memory::MemoryNetwork;
use conjoiner::cluster::protocol::SET_DEPLOYMENTS;
use conjoiner::cluster::{ClusterConfig, ClusterKey};
use conjoiner::command::operator_key::OperatorSecret;
use conjoiner::command::signature::OperatorSignature;
use conjoiner::command::trust::{SharedTrust, Trust};
use conjoiner::deploy::command::{command_bytes, Given};
use conjoiner::deploy::install::DeployerConfig;
use conjoiner::deploy::origin::{self, DeployRequest};
use conjoiner::deploy::publish::PublishOutcome;
use conjoiner::deploy::table::{Action, Deployment, RolloutPolicy, Row};
use conjoiner::node::{NetworkConfig, Node, NodeConfig, CLUSTER_ADDR_FILE};
use conjoiner::wire::now_ms;
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const LIMIT: Duration = Duration::from_secs(30);

/// A cluster on one in-memory network, with the data dirs of its nodes
/// (kept, so a node can stop and start again as itself) and a folder of
/// packages the origins may read.
pub struct Lab {
    pub net: MemoryNetwork,
    pub key: ClusterKey,
    pub root: tempfile::TempDir,
    /// Peer-to-peer chunk size, and peers a node sends to at once.
    pub chunk_bytes: u64,
    pub max_uploads: usize,
    /// The operator keys the nodes trust (none: open), by node name; a
    /// node not named trusts `trust`.
    pub trust: Arc<Trust>,
    pub open_nodes: Vec<String>,
}

pub struct Started {
    pub name: String,
    pub node: Node,
    pub addr: SocketAddr,
}

impl Lab {
    pub fn new() -> Lab {
        Lab {
            net: MemoryNetwork::new(Duration::from_millis(1)),
            key: ClusterKey::generate(),
            root: tempfile::tempdir().unwrap(),
            chunk_bytes: DeployerConfig::default().chunk_bytes,
            max_uploads: DeployerConfig::default().max_uploads,
            trust: Arc::new(Trust::default()),
            open_nodes: Vec::new(),
        }
    }

    pub fn packages(&self) -> PathBuf {
        let dir = self.root.path().join("packages");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub fn deployer(&self) -> DeployerConfig {
        DeployerConfig {
            probation: Duration::from_millis(300),
            package_dirs: vec![self.packages()],
            chunk_bytes: self.chunk_bytes,
            max_uploads: self.max_uploads,
            ..DeployerConfig::default()
        }
    }

    /// Starts node `name` (as itself again, if it ran before).
    pub async fn start(&self, name: &str, tags: &[(&str, &str)], seed: Option<SocketAddr>) -> Started {
        let dir = self.root.path().join(name);
        let node = Node::start(NodeConfig {
            name: name.into(),
            cluster: "lab".into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            data_dir: dir.clone(),
            transponder: Default::default(),
            deployer: DeployerConfig {
                trust: if self.open_nodes.iter().any(|n| n == name) {
                    SharedTrust::default()
                } else {
                    SharedTrust::new(Trust {
                        keys: self.trust.keys.clone(),
                    })
                },
                ..self.deployer()
            },
            monitor: MonitorConfig::every(Duration::from_millis(300)),
            network: Some(NetworkConfig {
                bind: "0.0.0.0:0".parse().unwrap(),
                advertise: None,
                join: seed.map(|a| a.to_string()).into_iter().collect(),
                mdns: false,
                key_file: None,
                key_env: Some(self.key.to_base64()),
                require_admission: false,
                join_token: None,
                timing: ClusterConfig::local(),
                memory: Some(self.net.clone()),
            }),
        })
        .await
        .expect("node starts");
        let addr = std::fs::read_to_string(dir.join(CLUSTER_ADDR_FILE))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Started {
            name: name.into(),
            node,
            addr,
        }
    }

    /// Starts `names` (with role `role`), each joining the first.
    pub async fn cluster(&self, names: &[(&str, &str)]) -> Vec<Started> {
        let mut nodes: Vec<Started> = Vec::new();
        for (name, role) in names {
            let seed = nodes.first().map(|n| n.addr);
            nodes.push(self.start(name, &[("role", role)], seed).await);
        }
        let all: Vec<&Started> = nodes.iter().collect();
        alive(&all, names.len()).await;
        nodes
    }

    /// A package of a built-in `uptime` module named `module`, in the
    /// folder origins may read.
    pub fn builtin_package(&self, module: &str) -> PathBuf {
        let src = self.root.path().join(format!("src-{module}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join("mod.json"),
            json!({"name": module, "version": "1.0.0", "builtin": "uptime"}).to_string(),
        )
        .unwrap();
        let out = self.packages().join(format!("{module}.tar.gz"));
        conjoiner::deploy::package::build(&src, &out).unwrap();
        out
    }

    /// A package of a built-in module `module` that carries `bytes` of
    /// noise (which does not compress): a package of many chunks.
    pub fn padded_package(&self, module: &str, bytes: usize) -> PathBuf {
        let src = self.root.path().join(format!("src-{module}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join("mod.json"),
            json!({"name": module, "version": "1.0.0", "builtin": "uptime"}).to_string(),
        )
        .unwrap();
        let mut noise = vec![0u8; bytes];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(src.join("noise.bin"), noise).unwrap();
        let out = self.packages().join(format!("{module}.tar.gz"));
        conjoiner::deploy::package::build(&src, &out).unwrap();
        out
    }

    /// A package of a process module `module` that runs `script`.
    pub fn process_package(&self, module: &str, version: &str, script: &str) -> PathBuf {
        let src = self.root.path().join(format!("src-{module}-{version}"));
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(
            src.join("mod.json"),
            json!({"name": module, "version": version, "main": "bin/run"}).to_string(),
        )
        .unwrap();
        let run = src.join("bin/run");
        std::fs::write(&run, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = self.packages().join(format!("{module}-{version}.tar.gz"));
        conjoiner::deploy::package::build(&src, &out).unwrap();
        out
    }
}

/// Waits until every node lists `count` members alive.
pub async fn alive(nodes: &[&Started], count: usize) {
    eventually(LIMIT, &format!("{count} alive everywhere"), || async {
        for n in nodes {
            let members = n.node.handle.ctx.cluster.members.send(ListMembers).await.ok()?;
            let up = members.iter().filter(|m| m.status == MemberStatus::Alive).count();
            if up != count {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Polls `check` until it answers, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not {what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where an origin reads a package.
pub enum Source<'a> {
    Path(&'a Path),
    Url(&'a str),
}

/// Deploys `package` as `module` from `origin` (as `conjoiner deploy` does).
pub async fn deploy(
    lab: &Lab,
    origin: &Started,
    module: &str,
    package: &Path,
    config: Option<Value>,
    target: Option<&str>,
    rollout: Option<RolloutPolicy>,
) -> PublishOutcome {
    deploy_from(lab, origin, module, Source::Path(package), config, target, rollout).await
}

pub async fn deploy_from(
    lab: &Lab,
    origin: &Started,
    module: &str,
    source: Source<'_>,
    config: Option<Value>,
    target: Option<&str>,
    rollout: Option<RolloutPolicy>,
) -> PublishOutcome {
    let deployment = deployment_at(lab, origin, module, source, config, target).await;
    command(origin, Given::default(), deployment, rollout)
        .await
        .expect("the entry is written")
}

/// The deploy `origin` makes of a request (the package fetched and named
/// by its sha256), not yet timed or signed.
pub async fn deployment_at(
    lab: &Lab,
    origin: &Started,
    module: &str,
    source: Source<'_>,
    config: Option<Value>,
    target: Option<&str>,
) -> Deployment {
    let handle = &origin.node.handle;
    let (path, url) = match source {
        Source::Path(p) => (Some(p.display().to_string()), None),
        Source::Url(u) => (None, Some(u.to_string())),
    };
    let order = origin::order_for(
        &handle.deploy,
        &origin.name,
        &lab.deployer(),
        DeployRequest {
            module,
            url: url.as_deref(),
            path: path.as_deref(),
            package: None,
            sha256: None,
            config: config.as_ref(),
        },
    )
    .await
    .expect("the origin takes the deploy");
    Deployment {
        module: order.module,
        target: target.map(str::to_string),
        action: Action::Deploy,
        source: Some(order.source),
        sha256: order.sha256,
        config: order.config,
        ts: 0,
        rollout: None,
        driver: None,
        signature: None,
    }
}

/// What `POST /v1/deploy` and `/v1/undeploy` do with a request at the
/// origin: the command is taken (checked, timed) and its entry written;
/// or the reason it was refused. A rollout's later waves are not driven.
pub async fn command(
    origin: &Started,
    given: Given,
    deployment: Deployment,
    rollout: Option<RolloutPolicy>,
) -> Result<PublishOutcome, String> {
    take_and_write(&origin.node.handle, given, deployment, rollout, Duration::from_secs(10)).await
}

/// Signs `deployment` with `secret` as `conjoiner deploy --operator-key`
/// does: a new id, the time now.
pub fn signed(
    secret: &OperatorSecret,
    mut deployment: Deployment,
    rollout: Option<&RolloutPolicy>,
) -> (Given, Deployment) {
    let id = uuid::Uuid::now_v7().to_string();
    deployment.ts = now_ms();
    let bytes = command_bytes(&id, &deployment, rollout);
    let given = Given {
        id: Some(id),
        ts: Some(deployment.ts),
        signature: Some(OperatorSignature {
            key: secret.public().to_string(),
            sig: secret.sign(&bytes),
        }),
        driver: deployment.driver.clone(),
    };
    (given, deployment)
}

/// Signs a rollout of `deployment` with `secret` to be driven by `origin`,
/// as `conjoiner deploy --operator-key --canary …` does at that node.
pub fn signed_rollout(
    secret: &OperatorSecret,
    origin: &Started,
    mut deployment: Deployment,
    rollout: &RolloutPolicy,
) -> (Given, Deployment) {
    deployment.driver = Some(origin.node.handle.driver());
    signed(secret, deployment, Some(rollout))
}

pub async fn undeploy(origin: &Started, module: &str, target: Option<&str>) -> PublishOutcome {
    let deployment = Deployment {
        module: module.into(),
        target: target.map(str::to_string),
        action: Action::Undeploy,
        source: None,
        sha256: None,
        config: None,
        ts: 0,
        rollout: None,
        driver: None,
        signature: None,
    };
    command(origin, Given::default(), deployment, None)
        .await
        .expect("the entry is written")
}

/// The config `module` runs with on `n`, if it is installed and running.
pub async fn running(n: &Started, module: &str) -> Option<Value> {
    let modules = n.node.handle.modules().await;
    let up = modules
        .iter()
        .any(|m| m.name == module && m.state == conjoiner::actors::ModuleState::Running);
    let installed = n.node.handle.deploy.store.read(module).ok()?;
    up.then_some(installed.record.config)
}

/// Waits until `module` runs on each of `nodes` with `config` (or, with
/// `None`, is gone from each).
pub async fn converge(nodes: &[&Started], module: &str, config: Option<Value>, what: &str) {
    eventually(LIMIT, what, || async {
        for n in nodes {
            let installed = n.node.handle.deploy.store.read(module).is_ok();
            match &config {
                Some(c) if running(n, module).await.as_ref() != Some(c) => return None,
                None if installed => return None,
                _ => {}
            }
        }
        Some(())
    })
    .await;
}

pub fn names(outcome: &PublishOutcome) -> Vec<(String, String)> {
    let mut r: Vec<(String, String)> = outcome
        .results
        .iter()
        .map(|r| (r.node.clone(), r.status.as_str().to_string()))
        .collect();
    r.sort();
    r
}

/// Entry `id` of the deployments table as node `n` holds it, read.
pub async fn row_at(n: &Started, id: &str) -> Option<Row> {
    let entries = n
        .node
        .handle
        .ctx
        .cluster
        .list_entries
        .send(ListEntries(SET_DEPLOYMENTS))
        .await
        .ok()?;
    entries.iter().find(|e| &*e.key == id).and_then(|e| Row::read(e).ok())
}

//! A small lab of "hosts" on one machine: network namespaces joined by veth
//! pairs to one bridge, for tests of what crosses a real network (multicast
//! mDNS, a host cut off and healed, packet loss and partitions made with
//! nftables on each host's input hook; this kernel has no netem).
//!
//! Every namespace, veth and bridge the lab makes is removed when it is
//! dropped, so a failing test leaves nothing behind. Names carry this test
//! process's pid, so parallel or leftover runs do not collide.

use std::process::Command;

pub struct Netlab {
    tag: String,
    subnet: String,
    bridge: String,
    hosts: usize,
    made_bridge: bool,
    made_namespaces: Vec<String>,
    made_veths: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netlab {
    /// Builds `hosts` namespaces on a bridge. Fails with the reason (not
    /// root, no iproute2) rather than skipping.
    pub fn new(hosts: usize) -> Result<Netlab, String> {
        let pid = std::process::id();
        let tag = format!("{}", pid % 100_000);
        let mut lab = Netlab {
            subnet: format!("10.{}.{}", 100 + (pid / 250) % 100, pid % 250),
            bridge: format!("cjbr{tag}"),
            tag,
            hosts,
            made_bridge: false,
            made_namespaces: Vec::new(),
            made_veths: Vec::new(),
        };
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), String> {
        let br = self.bridge.clone();
        ip(&["link", "add", &br, "type", "bridge", "mcast_snooping", "0"])?;
        self.made_bridge = true;
        ip(&["addr", "add", &format!("{}.1/24", self.subnet), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 1..=self.hosts {
            let ns = self.namespace(i);
            ip(&["netns", "add", &ns])?;
            self.made_namespaces.push(ns.clone());
            let host_end = format!("cjv{}h{i}", self.tag);
            let ns_end = format!("cjv{}n{i}", self.tag);
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &ns_end])?;
            self.made_veths.push(host_end.clone());
            ip(&["link", "set", &ns_end, "netns", &ns])?;
            ip(&["link", "set", &host_end, "master", &br])?;
            ip(&["link", "set", &host_end, "up"])?;
            ip(&["-n", &ns, "link", "set", &ns_end, "name", "eth0"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.ip(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    pub fn namespace(&self, i: usize) -> String {
        format!("cjt{}-{i}", self.tag)
    }

    /// Host `i`'s address on the bridge (1-based).
    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }

    /// Cuts host `i` off: its interface goes down.
    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.namespace(i), "link", "set", "eth0", "down"]).expect("cut host");
    }

    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.namespace(i), "link", "set", "eth0", "up"]).expect("heal host");
    }
}

/// Runs an nftables script inside namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `nft` (install nftables): {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin for nft")?
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netlab {
    /// Host `i` drops `loss_percent` of the packets that reach it, at
    /// random, and every packet from the hosts in `blocked`. Replaces what
    /// was set before; `(0, &[])` clears it.
    pub fn filter(&self, i: usize, loss_percent: u32, blocked: &[usize]) {
        let mut rules = String::new();
        if loss_percent > 0 {
            rules.push_str(&format!(
                "    iifname \"eth0\" numgen random mod 100 < {loss_percent} drop\n"
            ));
        }
        if !blocked.is_empty() {
            let ips: Vec<String> = blocked.iter().map(|b| self.ip(*b)).collect();
            rules.push_str(&format!("    ip saddr {{ {} }} drop\n", ips.join(", ")));
        }
        // Creating the table first makes the delete safe when there is none.
        let script = format!(
            "table inet chaos\ndelete table inet chaos\ntable inet chaos {{\n  chain input {{\n    \
             type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        nft(&self.namespace(i), &script).expect("set the host's packet filter");
    }
}

impl Drop for Netlab {
    fn drop(&mut self) {
        for ns in self.made_namespaces.drain(..) {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("netlab cleanup: {e}");
            }
        }
        // Deleting a namespace deletes its veth end, and with it the pair.
        for veth in self.made_veths.drain(..) {
            let _ = ip(&["link", "del", &veth]);
        }
        if self.made_bridge {
            if let Err(e) = ip(&["link", "del", &self.bridge]) {
                eprintln!("netlab cleanup: {e}");
            }
        }
    }
}

//! Network namespaces for chaos runs: one namespace per member, each with
//! a veth pair whose host end is enslaved to one bridge in the host
//! namespace, addresses `10.77.<k>.<i>/24` (the bridge itself is `.254`,
//! where the chaos tool's clients come from). Partitions are nftables rules
//! *inside* the member namespaces (an `inet ha_chaos` table dropping
//! packets from chosen peers), so the host's own firewall is never touched.
//!
//! Every name carries the owning process id (`ha-chaos-<pid>-n<i>`,
//! `hc<pid>b`, `hc<pid>v<i>`), so [`sweep_leftovers`] can remove what a
//! killed run left behind without touching anything else.

use std::io::Write;
use std::process::{Command, Stdio};

/// Name of the nftables table the partitions live in (per namespace).
pub const NFT_TABLE: &str = "ha_chaos";

/// Errors of namespace and firewall plumbing.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its standard error.
        stderr: String,
    },
    /// A command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Invalid request.
    #[error("{0}")]
    Invalid(String),
}

fn run(args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    let command = args.join(" ");
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| NetError::Spawn {
        command: command.clone(),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| NetError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| NetError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(NetError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One member's namespace.
#[derive(Clone, Debug)]
pub struct NsMember {
    /// Namespace name.
    pub ns: String,
    /// Host-side veth name (on the bridge).
    pub veth_host: String,
    /// Namespace-side veth name.
    pub veth_ns: String,
    /// Member address.
    pub ip: String,
}

/// The namespaces, veths and bridge of one run; dropping it removes them.
pub struct Lab {
    bridge: String,
    members: Vec<NsMember>,
    /// Address of the bridge (the clients' source address).
    pub bridge_ip: String,
    destroyed: bool,
}

/// The /24 prefix a process's lab uses (`10.77.<pid % 250>`), so concurrent
/// runs do not collide.
pub fn subnet_for(pid: u32) -> String {
    format!("10.77.{}", pid % 250)
}

impl Lab {
    /// Creates `n` namespaces on one bridge. On error, whatever was made is
    /// removed again.
    pub fn create(n: usize) -> Result<Lab, NetError> {
        if n == 0 || n > 200 {
            return Err(NetError::Invalid(format!("cannot make {n} namespaces")));
        }
        let pid = std::process::id();
        let subnet = subnet_for(pid);
        let mut lab = Lab {
            bridge: format!("hc{pid}b"),
            members: Vec::new(),
            bridge_ip: format!("{subnet}.254"),
            destroyed: false,
        };
        run(&["ip", "link", "add", &lab.bridge, "type", "bridge"], None)?;
        run(
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/24", lab.bridge_ip),
                "dev",
                &lab.bridge,
            ],
            None,
        )?;
        run(&["ip", "link", "set", &lab.bridge, "up"], None)?;
        for i in 1..=n {
            let m = NsMember {
                ns: format!("{}n{i}", crate::run_prefix()),
                veth_host: format!("hc{pid}v{i}"),
                veth_ns: format!("hc{pid}p{i}"),
                ip: format!("{subnet}.{i}"),
            };
            lab.members.push(m.clone());
            run(&["ip", "netns", "add", &m.ns], None)?;
            run(
                &[
                    "ip",
                    "link",
                    "add",
                    &m.veth_host,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &m.veth_ns,
                ],
                None,
            )?;
            run(&["ip", "link", "set", &m.veth_ns, "netns", &m.ns], None)?;
            run(
                &[
                    "ip",
                    "link",
                    "set",
                    &m.veth_host,
                    "master",
                    &lab.bridge,
                    "up",
                ],
                None,
            )?;
            let ns = |args: &[&str]| {
                let mut full = vec!["ip", "netns", "exec", &m.ns];
                full.extend_from_slice(args);
                run(&full, None)
            };
            ns(&["ip", "link", "set", "lo", "up"])?;
            ns(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", m.ip),
                "dev",
                &m.veth_ns,
            ])?;
            ns(&["ip", "link", "set", &m.veth_ns, "up"])?;
        }
        Ok(lab)
    }

    /// The members' namespaces.
    pub fn members(&self) -> &[NsMember] {
        &self.members
    }

    /// Installs a partition: for every `(from, to)` pair, packets from
    /// member `from` are dropped when they reach member `to`. Replaces any
    /// previous partition.
    pub fn partition(&self, drops: &[(usize, usize)]) -> Result<(), NetError> {
        let n = self.members.len();
        if let Some(&(a, b)) = drops.iter().find(|&&(a, b)| a >= n || b >= n || a == b) {
            return Err(NetError::Invalid(format!("bad drop pair ({a}, {b})")));
        }
        self.heal()?;
        for (to, m) in self.members.iter().enumerate() {
            let from: Vec<&str> = drops
                .iter()
                .filter(|&&(_, t)| t == to)
                .map(|&(f, _)| self.members[f].ip.as_str())
                .collect();
            if from.is_empty() {
                continue;
            }
            let rules = format!(
                "table inet {NFT_TABLE} {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  ip saddr {{ {} }} drop\n }}\n}}\n",
                from.join(", ")
            );
            run(
                &["ip", "netns", "exec", &m.ns, "nft", "-f", "-"],
                Some(&rules),
            )?;
        }
        Ok(())
    }

    /// Removes every partition rule.
    pub fn heal(&self) -> Result<(), NetError> {
        for m in &self.members {
            // Absent table: nothing to heal there.
            let listed = run(
                &["ip", "netns", "exec", &m.ns, "nft", "list", "tables"],
                None,
            )?;
            if listed.contains(NFT_TABLE) {
                run(
                    &[
                        "ip", "netns", "exec", &m.ns, "nft", "delete", "table", "inet", NFT_TABLE,
                    ],
                    None,
                )?;
            }
        }
        Ok(())
    }

    /// Removes namespaces, veths and the bridge (processes inside are
    /// SIGKILLed first). Errors are printed, not returned: cleanup goes on.
    pub fn destroy(&mut self) {
        if self.destroyed {
            return;
        }
        self.destroyed = true;
        for m in &self.members {
            kill_ns_processes(&m.ns);
            if let Err(e) = run(&["ip", "netns", "del", &m.ns], None) {
                eprintln!("ha-chaos: cleanup: {e}");
            }
            // Deleting the namespace deletes the pair; this is for the
            // half-made case.
            let _ = run(&["ip", "link", "del", &m.veth_host], None);
        }
        if let Err(e) = run(&["ip", "link", "del", &self.bridge], None) {
            eprintln!("ha-chaos: cleanup: {e}");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.destroy();
    }
}

fn kill_ns_processes(ns: &str) {
    if let Ok(pids) = run(&["ip", "netns", "pids", ns], None) {
        for p in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Whether `pid` is a live (not zombie) `ha-chaos` process. A pid reused
/// by another program counts as dead; an unreaped zombie counts as dead.
fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let Some((head, tail)) = stat.rsplit_once(')') else {
        return false;
    };
    let state = tail.trim_start().chars().next().unwrap_or('X');
    let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
    !matches!(state, 'Z' | 'X') && comm.starts_with("ha-chaos")
}

/// The owner pid encoded in one of our names, if the name is ours.
pub fn owner_of(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix("ha-chaos-") {
        return rest.split('-').next()?.parse().ok();
    }
    let rest = name.strip_prefix("hc")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let tail = &rest[digits.len()..];
    let ours = tail == "b"
        || (tail.len() > 1
            && (tail.starts_with('v') || tail.starts_with('p'))
            && tail[1..].chars().all(|c| c.is_ascii_digit()));
    if ours { digits.parse().ok() } else { None }
}

/// Removes namespaces, links and temp data directories of earlier runs
/// whose process is gone, and SIGKILLs member processes whose command line
/// names a data directory of such a run. Returns what was removed.
pub fn sweep_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let me = std::process::id();
    let dead = |owner: u32| owner != me && !pid_alive(owner);
    // Processes first (they may hold the namespaces).
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let Some(pos) = cmdline.find("ha-chaos-") else {
                continue;
            };
            if let Some(owner) = owner_of(cmdline[pos..].split(['/', ' ']).next().unwrap_or(""))
                && dead(owner)
                && pid != me
                && let Ok(p) = i32::try_from(pid)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
                removed.push(format!("process {pid}"));
            }
        }
    }
    // Data directories of dead runs in the temp dir (tempfile names them
    // `ha-chaos-<pid>-XXXXXX`).
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("ha-chaos-")
                && owner_of(&name).is_some_and(dead)
                && e.file_type().is_ok_and(|t| t.is_dir())
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                removed.push(format!("dir {}", e.path().display()));
            }
        }
    }
    if let Ok(list) = run(&["ip", "netns", "list"], None) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if owner_of(name).is_some_and(dead) {
                kill_ns_processes(name);
                if run(&["ip", "netns", "del", name], None).is_ok() {
                    removed.push(format!("netns {name}"));
                }
            }
        }
    }
    if let Ok(list) = run(&["ip", "-o", "link", "show"], None) {
        for line in list.lines() {
            // "12: hc123b: <...>" or "13: hc123v1@if2: <...>"
            let name = line
                .split(':')
                .nth(1)
                .map(|s| s.trim().split('@').next().unwrap_or(""))
                .unwrap_or("");
            if owner_of(name).is_some_and(dead) && run(&["ip", "link", "del", name], None).is_ok() {
                removed.push(format!("link {name}"));
            }
        }
    }
    removed
}

/// Whether this process can make namespaces and nftables rules (root, `ip`
/// and `nft` present): probes by creating and deleting one namespace.
pub fn namespaces_available() -> Result<(), NetError> {
    let probe = format!("{}probe", crate::run_prefix());
    run(&["ip", "netns", "add", &probe], None)?;
    let nft = run(
        &["ip", "netns", "exec", &probe, "nft", "list", "tables"],
        None,
    );
    let _ = run(&["ip", "netns", "del", &probe], None);
    nft.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_parsed_only_from_our_names() {
        assert_eq!(owner_of("ha-chaos-123-n1"), Some(123));
        assert_eq!(owner_of("ha-chaos-77-abcd"), Some(77));
        assert_eq!(owner_of("hc42b"), Some(42));
        assert_eq!(owner_of("hc42v3"), Some(42));
        assert_eq!(owner_of("hc42p3"), Some(42));
        assert_eq!(owner_of("hc42x"), None);
        assert_eq!(owner_of("hcb"), None);
        assert_eq!(owner_of("eth0"), None);
        assert_eq!(owner_of("docker0"), None);
        assert_eq!(owner_of("ha-chaos-x-n1"), None);
    }

    #[test]
    fn only_live_ha_chaos_processes_count_as_owners() {
        // This test binary is not called ha-chaos*: a pid reused by another
        // program must not protect leftovers.
        assert!(!pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
    }

    #[test]
    fn subnet_stays_in_range() {
        assert_eq!(subnet_for(4_194_303), "10.77.53");
        assert_eq!(subnet_for(250), "10.77.0");
    }

    /// Needs root, `ip` and `nft`: creates a 3-member lab, checks a
    /// partition really drops traffic and heal restores it, and that
    /// destroy leaves nothing behind. Skips (passes) without root.
    #[test]
    fn lab_partitions_and_cleans_up() {
        if namespaces_available().is_err() {
            eprintln!("skipped: namespaces or nft unavailable");
            return;
        }
        let mut lab = Lab::create(3).unwrap();
        let ns0 = lab.members()[0].ns.clone();
        let ip1 = lab.members()[1].ip.clone();
        let ping = |ns: &str, ip: &str| {
            run(
                &["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", ip],
                None,
            )
            .is_ok()
        };
        let have_ping = run(&["sh", "-c", "command -v ping"], None).is_ok();
        if have_ping {
            assert!(ping(&ns0, &ip1), "members reach each other");
        }
        lab.partition(&[(0, 1), (1, 0)]).unwrap();
        let tables = run(
            &[
                "ip",
                "netns",
                "exec",
                &lab.members()[1].ns,
                "nft",
                "list",
                "ruleset",
            ],
            None,
        )
        .unwrap();
        assert!(tables.contains(&lab.members()[0].ip), "{tables}");
        if have_ping {
            assert!(!ping(&ns0, &ip1), "partitioned members do not");
        }
        lab.heal().unwrap();
        if have_ping {
            assert!(ping(&ns0, &ip1), "healed");
        }
        assert!(lab.partition(&[(0, 0)]).is_err());
        lab.destroy();
        let list = run(&["ip", "netns", "list"], None).unwrap();
        assert!(!list.contains(&ns0), "{list}");
        let links = run(&["ip", "-o", "link", "show"], None).unwrap();
        assert!(!links.contains(&format!("hc{}b", std::process::id())));
    }
}

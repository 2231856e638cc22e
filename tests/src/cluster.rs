//! A RabbitMQ cluster of a test's own, on this machine, beside its broker
//! ([`Cluster`]): `n` nodes of the installed RabbitMQ, each with ports,
//! node name, data, logs and configuration of its own under a fresh
//! temporary directory, joined into one cluster, to be crashed and
//! restarted by the test.
//!
//! ```no_run
//! # async fn t() {
//! use eda_tests::cluster::Cluster;
//!
//! let Some(cluster) = Cluster::start_or_skip(3).await else { return };
//! let url = cluster.amqp_url(0); // amqp://guest:guest@127.0.0.1:<port>/%2f
//! cluster.kill_node(1).await.unwrap(); // kill -9
//! cluster.start_node(1).await.unwrap(); // back, and in the cluster again
//! drop(cluster); // every node killed, its directory removed
//! # }
//! ```
//!
//! How a node is started: the installed `rabbitmq-server` script
//! (`/usr/lib/rabbitmq/bin`, on Debian, past the wrapper in `/usr/sbin` that
//! would `su` to `rabbitmq`; else the first one on `PATH`), in the
//! foreground, as the `rabbitmq` user when the tests run as root (as the
//! current user otherwise), with an environment of its own: `RABBITMQ_*`
//! variables pointing everything (node name, AMQP and distribution ports,
//! data, logs, pid file, configuration, enabled plugins: none) into the
//! cluster's directory, and an `.erlang.cookie` of the cluster's own in
//! `HOME`. Nothing of the machine's broker is read (its
//! `/etc/rabbitmq/rabbitmq-env.conf` and `rabbitmq.conf` are replaced by the
//! cluster's own) or touched; only `epmd` (port 4369) is shared.
//!
//! Nodes are named `eda-<pid>-<n>-<random>-<i>@localhost`, and listen on
//! 127.0.0.1 only. Indexes are 0-based: node 0 is the one the others join.
//!
//! Every process of a node carries `EDA_RABBITMQ_CLUSTER=<its directory>` in
//! its environment: [`Cluster`]'s `Drop` kills what carries it, and
//! [`Cluster::start`] kills (and removes the directories of) the clusters of
//! test processes that died without dropping theirs. (Not an `epmd` that a
//! node started because none was running: it serves every node of the
//! machine, and stays, as after any node.)

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use eda_core::testing::{service_missing, unique_name};
use serde_json::Value;
use tokio::process::{Child, Command};

/// How long a node has to boot, stop, or appear in the cluster.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long one `rabbitmqctl` (or `rabbitmq-queues`) call may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two looks at something being waited for.
const POLL: Duration = Duration::from_millis(200);
/// Where Debian keeps the real scripts (`/usr/sbin` has wrappers that `su`).
const DEBIAN_BIN: &str = "/usr/lib/rabbitmq/bin";
/// The environment variable that marks every process of a cluster.
const MARKER: &str = "EDA_RABBITMQ_CLUSTER";
/// How many times a node's first boot is tried again on fresh ports when
/// another process took one of them meanwhile.
const PORT_RETRIES: usize = 2;
/// The distribution ports of the CLI tools (35672-35682 by default: wider,
/// for tests running side by side). The nodes' ports are not taken there.
const CLI_DIST_PORTS: std::ops::RangeInclusive<u16> = 35672..=35872;
/// The last lines of a node's logs quoted in an error.
const LOG_TAIL_LINES: usize = 30;
/// The first error lines of a node's console output quoted in an error.
const LOG_ERROR_LINES: usize = 15;

/// A RabbitMQ cluster of the test's own: `n` local nodes, joined, with
/// ports, data and logs of their own under a temporary directory.
///
/// Dropping it (at the end of the test, or while a failed test unwinds)
/// kills every process of its nodes (`kill -9`: nothing of their data is
/// kept) and removes its directory.
#[derive(Debug)]
pub struct Cluster {
    /// The cluster's directory: `home/` (the cookie), `node-<i>/`, …
    dir: PathBuf,
    /// Where `rabbitmq-server`, `rabbitmqctl` and `rabbitmq-queues` are.
    bin: PathBuf,
    /// The user and group the nodes run as (`None`: as this process).
    user: Option<(u32, u32)>,
    nodes: Vec<Node>,
}

/// One node of a [`Cluster`].
#[derive(Debug)]
struct Node {
    /// `eda-…-<i>@localhost`.
    name: String,
    /// `<cluster>/node-<i>`: data (`mnesia/`), logs (`log/`), its
    /// configuration, its pid file and its console output.
    dir: PathBuf,
    amqp_port: u16,
    dist_port: u16,
    /// The running `rabbitmq-server` script (the Erlang VM is its child),
    /// `None` while the node is down.
    process: Mutex<Option<Child>>,
}

impl Cluster {
    /// Starts `n` nodes (named `eda-<unique>-<i>@localhost`), joins nodes
    /// `1..n` to node 0, and waits until `rabbitmqctl cluster_status` on
    /// node 0 lists all of them running.
    ///
    /// Fails, saying why, when RabbitMQ is not installed (see
    /// [`start_or_skip`](Self::start_or_skip) to skip instead) or a node
    /// does not start (with the tail of its logs) within a minute. What was
    /// started is stopped and removed again on failure.
    pub async fn start(n: usize) -> Result<Cluster, String> {
        if n == 0 {
            return Err("a cluster needs at least one node".to_owned());
        }
        let bin = installed()?;
        let base = base_dir();
        reap_abandoned(&base);
        let unique = unique_name("eda").replace('_', "-");
        let dir = base.join(&unique);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut cluster = Cluster {
            dir,
            bin,
            user: run_as(),
            nodes: Vec::new(),
        };
        // From here on, `Drop` cleans up whatever happens.
        cluster.prepare(&unique, n)?;
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            let mut retries = 0;
            loop {
                match cluster.wait_booted(i).await {
                    Ok(()) => break,
                    Err(e) if retries < PORT_RETRIES && e.contains("eaddrinuse") => {
                        // Another process took a port between our look and
                        // the node's bind: again, on other ports.
                        retries += 1;
                        cluster.kill(i).await?;
                        let [amqp_port, dist_port] = free_ports::<2>()?;
                        let node = &mut cluster.nodes[i];
                        node.amqp_port = amqp_port;
                        node.dist_port = dist_port;
                        cluster.write_node_config(i)?;
                        cluster.spawn(i)?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let seed = cluster.nodes[0].name.clone();
        for i in 1..n {
            cluster.ctl(i, "rabbitmqctl", &["stop_app"]).await?;
            cluster
                .ctl(i, "rabbitmqctl", &["join_cluster", &seed])
                .await?;
            cluster.ctl(i, "rabbitmqctl", &["start_app"]).await?;
        }
        let all: Vec<usize> = (0..n).collect();
        cluster
            .wait_for("all nodes running in the cluster", |c| {
                let all = all.clone();
                async move { c.running_nodes_seen_by(0).await.is_ok_and(|r| r == all) }
            })
            .await?;
        Ok(cluster)
    }

    /// [`start`](Self::start), or `None` (skipped, saying so on stderr)
    /// when RabbitMQ is not installed, except under `CI=true`, where that
    /// fails the test. Panics when RabbitMQ is installed but the cluster
    /// does not start.
    pub async fn start_or_skip(n: usize) -> Option<Cluster> {
        if let Err(e) = installed() {
            return service_missing(
                "RabbitMQ (for a cluster of the test's own)",
                DEBIAN_BIN,
                &e,
                "apt-get install rabbitmq-server",
            );
        }
        match Cluster::start(n).await {
            Ok(cluster) => Some(cluster),
            Err(e) => panic!("the RabbitMQ cluster did not start: {e}"),
        }
    }

    /// How many nodes the cluster has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never: [`start`](Self::start)
    /// wants one at least).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The URL of node `i`: `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn amqp_url(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.nodes[i].amqp_port
        )
    }

    /// The URLs of all nodes, in order.
    pub fn amqp_urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.amqp_url(i)).collect()
    }

    /// The Erlang node name of node `i` (`eda-…-<i>@localhost`).
    pub fn node_name(&self, i: usize) -> String {
        self.nodes[i].name.clone()
    }

    /// The cluster's directory (removed when the cluster is dropped): a
    /// `node-<i>/` for each node, with `log/` and `console.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether node `i`'s process is running (as far as this process
    /// knows: it was started, and has not exited).
    pub fn is_running(&self, i: usize) -> bool {
        let mut process = lock(&self.nodes[i].process);
        match process.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) => {
                *process = None;
                false
            }
            None => false,
        }
    }

    /// The nodes running in the cluster, as `rabbitmqctl cluster_status`
    /// on the first running node sees it.
    pub async fn running_nodes(&self) -> Result<Vec<usize>, String> {
        let mut last = "no node is running".to_owned();
        for i in 0..self.nodes.len() {
            if self.is_running(i) {
                match self.running_nodes_seen_by(i).await {
                    Ok(nodes) => return Ok(nodes),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    /// Stops node `i` cleanly (`rabbitmqctl stop`), and waits until its
    /// process has exited. If it does not stop within a minute it is
    /// killed, and this fails.
    pub async fn stop_node(&self, i: usize) -> Result<(), String> {
        if !self.is_running(i) {
            return Err(format!("{} is not running", self.nodes[i].name));
        }
        let stopped = self.ctl(i, "rabbitmqctl", &["stop"]).await;
        let child = lock(&self.nodes[i].process).take();
        if let Some(mut child) = child {
            match tokio::time::timeout(TIMEOUT, child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    kill_processes(&self.nodes[i].env_entry(), None);
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Err(format!(
                        "{} did not stop within {TIMEOUT:?}, and was killed",
                        self.nodes[i].name
                    ));
                }
            }
        }
        self.wait_gone(i).await?;
        stopped.map(drop)
    }

    /// Kills node `i`: `kill -9` of its Erlang VM (and of whatever else of
    /// the node's is running), as in a crash; waits until it is gone.
    pub async fn kill_node(&self, i: usize) -> Result<(), String> {
        if !self.is_running(i) {
            return Err(format!("{} is not running", self.nodes[i].name));
        }
        self.kill(i).await
    }

    /// Starts node `i` again (after [`stop_node`](Self::stop_node) or
    /// [`kill_node`](Self::kill_node)), with its data: it rejoins the
    /// cluster by itself. Waits until it has booted and `rabbitmqctl
    /// cluster_status`, on another running node, lists it running.
    pub async fn start_node(&self, i: usize) -> Result<(), String> {
        if self.is_running(i) {
            return Err(format!("{} is running already", self.nodes[i].name));
        }
        self.spawn(i)?;
        self.wait_booted(i).await?;
        let asked = (0..self.nodes.len())
            .find(|&j| j != i && self.is_running(j))
            .unwrap_or(i);
        self.wait_for(
            &format!("{} running in the cluster", self.nodes[i].name),
            |c| async move {
                c.running_nodes_seen_by(asked)
                    .await
                    .is_ok_and(|r| r.contains(&i))
            },
        )
        .await
    }

    /// The leader of the quorum queue `queue` once there is one that
    /// `accept` takes (a new one, after its leader was killed, say):
    /// polled every 50 ms, for up to a minute (then a panic).
    pub async fn wait_for_leader(&self, queue: &str, accept: impl Fn(usize) -> bool) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.leader_of(queue).await {
                Ok(leader) if accept(leader) => return leader,
                other => assert!(
                    Instant::now() < deadline,
                    "no acceptable leader of {queue} within 60 s: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node that holds the leader of the quorum queue `queue` (in the
    /// vhost `/`), as `rabbitmq-queues quorum_status` on the first running
    /// node that answers reports it: the member in state `leader` (of the
    /// highest term, should two say so). Fails while the queue has no
    /// leader (an election is going on), or is not a quorum queue.
    pub async fn leader_of(&self, queue: &str) -> Result<usize, String> {
        let mut last = "no node is running".to_owned();
        for i in 0..self.nodes.len() {
            if !self.is_running(i) {
                continue;
            }
            let status = match self
                .ctl(
                    i,
                    "rabbitmq-queues",
                    &["quorum_status", queue, "--formatter", "json", "--quiet"],
                )
                .await
            {
                Ok(status) => status,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let members: Value = serde_json::from_str(status.trim())
                .map_err(|e| format!("quorum_status of {queue}: {e}: {status}"))?;
            let leader = members
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["Raft State"] == "leader")
                .max_by_key(|m| m["Term"].as_u64().unwrap_or(0))
                .and_then(|m| m["Node Name"].as_str());
            return match leader {
                Some(name) => self
                    .index_of(name)
                    .ok_or_else(|| format!("{queue}'s leader {name} is not a node of the cluster")),
                None => Err(format!("{queue} has no leader now: {status}")),
            };
        }
        Err(last)
    }

    /// The directory, the cookie, the configuration of every node.
    fn prepare(&mut self, unique: &str, n: usize) -> Result<(), String> {
        write(&self.dir.join("owner"), &owner_stamp(std::process::id())?)?;
        let home = self.dir.join("home");
        mkdir(&home)?;
        let cookie = home.join(".erlang.cookie");
        let secret: String = (0..20).map(|_| fastrand::uppercase()).collect();
        write(&cookie, &secret)?;
        fs::set_permissions(&cookie, fs::Permissions::from_mode(0o400))
            .map_err(|e| format!("chmod {}: {e}", cookie.display()))?;
        // No plugin: the machine's broker may have the management (15672)
        // or Prometheus (15692) listeners; two nodes cannot bind them.
        write(&self.dir.join("enabled_plugins"), "[].\n")?;
        // Instead of /etc/rabbitmq/rabbitmq-env.conf (which names the
        // machine's node).
        write(
            &self.dir.join("rabbitmq-env.conf"),
            "# the environment is set by eda_tests::cluster\n",
        )?;
        let ports = free_ports_n(2 * n)?;
        for i in 0..n {
            let dir = self.dir.join(format!("node-{i}"));
            for sub in ["mnesia", "log", "conf.d"] {
                mkdir(&dir.join(sub))?;
            }
            self.nodes.push(Node {
                name: format!("{unique}-{i}@localhost"),
                dir,
                amqp_port: ports[2 * i],
                dist_port: ports[2 * i + 1],
                process: Mutex::new(None),
            });
            self.write_node_config(i)?;
        }
        if let Some((uid, gid)) = self.user {
            chown_tree(&self.dir, uid, gid)?;
        }
        Ok(())
    }

    /// Node `i`'s `rabbitmq.conf`.
    fn write_node_config(&self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let config = format!(
            "listeners.tcp.1 = 127.0.0.1:{}\n\
             loopback_users.guest = true\n\
             log.file.level = info\n",
            node.amqp_port
        );
        let path = node.dir.join("rabbitmq.conf");
        write(&path, &config)?;
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// A command of the installation, as the nodes' user, in the
    /// cluster's environment (and no other: nothing of the machine's
    /// broker, nor of this process's `RABBITMQ_*`).
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        let path = std::env::var("PATH").unwrap_or_default();
        command
            .env_clear()
            .env(
                "PATH",
                format!("{path}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"),
            )
            .env("HOME", self.dir.join("home"))
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env(
                "RABBITMQ_CTL_DIST_PORT_MIN",
                CLI_DIST_PORTS.start().to_string(),
            )
            .env(
                "RABBITMQ_CTL_DIST_PORT_MAX",
                CLI_DIST_PORTS.end().to_string(),
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Starts node `i`'s process (it boots in the background).
    fn spawn(&self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        // Of this boot only (the log file keeps the earlier ones).
        let console = node.dir.join("console.log");
        write(&console, "")?;
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console)
            .map_err(|e| format!("cannot open {}: {e}", console.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", console.display()))?;
        let mnesia = node.dir.join("mnesia");
        let mut command = self.command("rabbitmq-server");
        command
            .env(MARKER, &self.dir)
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", &mnesia)
            .env("RABBITMQ_MNESIA_DIR", mnesia.join(&node.name))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("RABBITMQ_PID_FILE", node.dir.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_CONFIG_FILES", node.dir.join("conf.d"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                node.dir.join("advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            // The distribution on the loopback interface only, as the
            // machine's broker.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdout(out)
            .stderr(err)
            // Only `Drop` (or `kill_node`) kills a node: not the end of a
            // task that happened to hold it.
            .kill_on_drop(false);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        *lock(&node.process) = Some(child);
        Ok(())
    }

    /// Waits until node `i` has booted: its AMQP port accepts connections
    /// and `rabbit_boot_state` says `ready`.
    async fn wait_booted(&self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let deadline = Instant::now() + TIMEOUT;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, node.amqp_port));
        loop {
            if !self.is_running(i) {
                return Err(format!(
                    "{} exited while starting\n{}",
                    node.name,
                    self.log_tail(i)
                ));
            }
            if TcpStream::connect_timeout(&address, POLL).is_ok()
                && self
                    .ctl(i, "rabbitmqctl", &["eval", "rabbit_boot_state:get()."])
                    .await
                    .is_ok_and(|state| state.trim() == "ready")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not start within {TIMEOUT:?}\n{}",
                    node.name,
                    self.log_tail(i)
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (a minute at most) until no process of node `i`'s is left.
    async fn wait_gone(&self, i: usize) -> Result<(), String> {
        let entry = self.nodes[i].env_entry();
        let deadline = Instant::now() + TIMEOUT;
        while !processes_with(&entry).is_empty() {
            if Instant::now() > deadline {
                return Err(format!(
                    "processes of {} still running after {TIMEOUT:?}",
                    self.nodes[i].name
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// `kill -9` of node `i`'s processes; waits until they are gone.
    async fn kill(&self, i: usize) -> Result<(), String> {
        let child = lock(&self.nodes[i].process).take();
        let script = child.as_ref().and_then(Child::id);
        // The VM first, and what it started: the script waiting for it
        // then reaps it.
        kill_processes(&self.nodes[i].env_entry(), script);
        if let Some(mut child) = child
            && tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.wait_gone(i).await
    }

    /// Runs a CLI tool (`rabbitmqctl`, `rabbitmq-queues`) against node
    /// `i`: its standard output, or an error with what it said.
    async fn ctl(&self, i: usize, tool: &str, args: &[&str]) -> Result<String, String> {
        let node = &self.nodes[i].name;
        let mut command = self.command(tool);
        command.arg("-n").arg(node).args(args);
        let output = tokio::time::timeout(CLI_TIMEOUT, command.output())
            .await
            .map_err(|_| format!("{tool} -n {node} {args:?}: no answer within {CLI_TIMEOUT:?}"))?
            .map_err(|e| format!("{tool}: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{tool} -n {node} {}: {}: {}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                stdout.trim()
            ))
        }
    }

    /// `running_nodes` of `rabbitmqctl cluster_status` on node `i`, as
    /// indexes, sorted.
    async fn running_nodes_seen_by(&self, i: usize) -> Result<Vec<usize>, String> {
        let status = self
            .ctl(i, "rabbitmqctl", &["cluster_status", "--formatter", "json"])
            .await?;
        let status: Value = serde_json::from_str(status.trim())
            .map_err(|e| format!("cluster_status: {e}: {status}"))?;
        let mut running: Vec<usize> = status["running_nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|name| self.index_of(name.as_str()?))
            .collect();
        running.sort_unstable();
        Ok(running)
    }

    /// Polls `check` until it holds, for a minute at most.
    async fn wait_for<'a, F, Fut>(&'a self, what: &str, check: F) -> Result<(), String>
    where
        F: Fn(&'a Cluster) -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + TIMEOUT;
        while !check(self).await {
            if Instant::now() > deadline {
                return Err(format!("not within {TIMEOUT:?}: {what}"));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// What node `i` said of its last boot: the first errors (the cause,
    /// usually, before pages of crash reports) and the last lines of its
    /// console output, and the last lines of its log file.
    fn log_tail(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let console = node.dir.join("console.log");
        let log = node.dir.join("log").join(format!("{}.log", node.name));
        let console_text = read_tail(&console).unwrap_or_else(|e| format!("({e})"));
        let errors: Vec<&str> = console_text
            .lines()
            .filter(|l| l.contains("[error]") || l.contains("ERROR"))
            .take(LOG_ERROR_LINES)
            .collect();
        let mut report = format!(
            "--- first errors in {}:\n{}\n--- last lines of it:\n{}",
            console.display(),
            errors.join("\n"),
            last_lines(&console_text, LOG_TAIL_LINES)
        );
        if let Ok(text) = read_tail(&log) {
            report.push_str(&format!(
                "\n--- last lines of {}:\n{}",
                log.display(),
                last_lines(&text, LOG_TAIL_LINES)
            ));
        }
        report
    }
}

impl Node {
    /// The environment entry that only this node's processes carry.
    fn env_entry(&self) -> String {
        format!("RABBITMQ_NODENAME={}", self.name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let children: Vec<Child> = self
            .nodes
            .iter_mut()
            .filter_map(|n| {
                n.process
                    .get_mut()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .take()
            })
            .collect();
        let marker = format!("{MARKER}={}", self.dir.display());
        let scripts: Vec<u32> = children.iter().filter_map(Child::id).collect();
        // The VMs first (their scripts reap them), then the scripts.
        let vms: Vec<u32> = processes_with(&marker)
            .into_iter()
            .filter(|pid| !scripts.contains(pid))
            .collect();
        kill_pids(&vms);
        for mut child in children {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    let _ = child.start_kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if !kill_and_wait(&marker, Duration::from_secs(10)) {
            eprintln!(
                "processes of the test RabbitMQ cluster in {} are still running",
                self.dir.display()
            );
        }
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

/// Where RabbitMQ's scripts are, or why not.
fn installed() -> Result<PathBuf, String> {
    const TOOLS: [&str; 3] = ["rabbitmq-server", "rabbitmqctl", "rabbitmq-queues"];
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::iter::once(PathBuf::from(DEBIAN_BIN))
        .chain(std::env::split_paths(&path))
        .chain(["/usr/local/sbin", "/usr/sbin"].map(PathBuf::from));
    for dir in candidates {
        let server = dir.join("rabbitmq-server");
        // Debian's `/usr/sbin/rabbitmq-server` is a wrapper that `su`s and
        // sends the output elsewhere: the real one is in DEBIAN_BIN.
        let wrapper =
            fs::canonicalize(&server).is_ok_and(|real| real.ends_with("rabbitmq-script-wrapper"));
        if !wrapper && TOOLS.iter().all(|tool| dir.join(tool).is_file()) {
            return Ok(dir);
        }
    }
    Err(format!(
        "RabbitMQ is not installed: no {} in {DEBIAN_BIN} or on PATH",
        TOOLS.join(", ")
    ))
}

/// The user and group the nodes run as: `rabbitmq` when this process is
/// root and that user exists (RabbitMQ's own packages run it so), else
/// this process's own.
fn run_as() -> Option<(u32, u32)> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?;
    if euid != "0" {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            ["rabbitmq", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
            _ => None,
        }
    })
}

/// The directory of all test clusters (each in a directory of its own).
fn base_dir() -> PathBuf {
    std::env::temp_dir().join("eda-rabbitmq-clusters")
}

/// `"<pid> <start time>"` of a process: who owns a cluster (a pid alone
/// could be reused).
fn owner_stamp(pid: u32) -> Result<String, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Field 22 (start time); fields 3.. follow the command's `)`.
    let start = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .ok_or_else(|| format!("/proc/{pid}/stat: {stat}"))?;
    Ok(format!("{pid} {start}"))
}

/// Kills the nodes, and removes the directories, of clusters whose test
/// process is gone (killed before it could drop its cluster).
fn reap_abandoned(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let abandoned = match fs::read_to_string(dir.join("owner")) {
            Ok(owner) => owner
                .split_whitespace()
                .next()
                .and_then(|pid| pid.parse().ok())
                .is_none_or(|pid| owner_stamp(pid).ok().as_deref() != Some(owner.trim())),
            // Being created right now, or very old.
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > Duration::from_secs(600)),
        };
        if abandoned {
            let marker = format!("{MARKER}={}", dir.display());
            kill_and_wait(&marker, Duration::from_secs(10));
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// The processes (not zombies) whose environment has the entry `entry`
/// (`NAME=value`), from `/proc`; but `epmd`, which a node starts when none
/// is running, and which then serves every node of the machine.
fn processes_with(entry: &str) -> Vec<u32> {
    let Ok(proc) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            // A zombie's environment reads empty.
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
        })
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |c| c.trim() != "epmd")
        })
        .collect()
}

fn kill_pids(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `kill -9` of the processes with `entry` in their environment, but
/// `except`.
fn kill_processes(entry: &str, except: Option<u32>) {
    let pids: Vec<u32> = processes_with(entry)
        .into_iter()
        .filter(|pid| Some(*pid) != except)
        .collect();
    kill_pids(&pids);
}

/// Kills the processes with `entry` in their environment until none is
/// left, for `within` at most: whether none is.
fn kill_and_wait(entry: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let pids = processes_with(entry);
        if pids.is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        kill_pids(&pids);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `N` distinct ports free on 127.0.0.1 now.
fn free_ports<const N: usize>() -> Result<[u16; N], String> {
    let ports = free_ports_n(N)?;
    Ok(std::array::from_fn(|i| ports[i]))
}

/// `n` distinct ports free on 127.0.0.1 now (the listeners are held until
/// all are found, so they differ), outside the CLI tools' range.
fn free_ports_n(n: usize) -> Result<Vec<u16>, String> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?
            .port();
        if !CLI_DIST_PORTS.contains(&port) {
            ports.push(port);
        }
        held.push(listener);
        if held.len() > 100 * n {
            return Err("no free ports on 127.0.0.1".to_owned());
        }
    }
    Ok(ports)
}

fn mkdir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `chown -R uid:gid dir`.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    if dir.is_dir() {
        let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            chown_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The last 256 KiB of a file.
fn read_tail(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A lock that a panic elsewhere did not spoil.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

//! Servers of a test's own, for tests that break them: a Kafka cluster (one node or three,
//! KRaft, from the broker `scripts/stack.sh` resolved) and a PostgreSQL server, each on ports
//! from a range the test gives and in a directory of its own, removed when dropped. A test
//! that restarts the broker or the database must not do it to the stack every other test
//! shares.
//!
//! Kafka's nodes are made from `infra/kafka/server.properties`, the template of the local
//! stack's nodes too.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The checkout's root (`tests/e2e/../..`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// A directory of the test's own under the system's temporary directory.
fn scratch_dir(what: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sagapay-{what}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Polls `ready` every 100 ms until it is true or `timeout` passes.
fn wait(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} not ready after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Sends SIGTERM and waits for the process to exit (SIGKILL after `grace`).
fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One node of a [`KafkaCluster`].
struct KafkaNode {
    port: u16,
    properties: PathBuf,
    logs: PathBuf,
    process: Option<Child>,
}

/// A Kafka cluster of one or three combined broker+controller nodes. With three, topics and
/// the offsets topic have three replicas and writes need two (`min.insync.replicas`).
pub struct KafkaCluster {
    dir: PathBuf,
    nodes: Vec<KafkaNode>,
    /// The connection's security of the cluster's own checks (the administrator's, when
    /// secure).
    admin_overrides: Vec<(String, String)>,
}

/// What makes a cluster secure ([`KafkaCluster::start_secure`]): a CA of the test's own, the
/// nodes' certificate (for 127.0.0.1, signed by it), and SCRAM users (the administrator
/// `admin`, a super user, and the given ones), each with a random password in
/// `<dir>/<user>.password`.
pub struct KafkaSecurity {
    dir: PathBuf,
    /// The CA's certificate, PEM: what clients trust (`ssl.ca.location`).
    pub ca_file: PathBuf,
    keystore: PathBuf,
    node_principal: String,
    users: Vec<(String, String)>,
}

impl KafkaSecurity {
    pub fn new(users: &[&str]) -> KafkaSecurity {
        let dir = scratch_dir("kafka-security");
        let ca = crate::tls::TestCa::new("the Kafka cluster's CA");
        let ca_file = ca.write(&dir, "ca.pem");
        let node = ca.server(&["127.0.0.1"]);
        let keystore = dir.join("node.pem");
        std::fs::write(&keystore, format!("{}{}", node.key_pem, node.cert_pem))
            .expect("the nodes' key store");
        let users: Vec<(String, String)> = std::iter::once("admin")
            .chain(users.iter().copied())
            .map(|u| (u.to_owned(), uuid::Uuid::new_v4().simple().to_string()))
            .collect();
        for (user, password) in &users {
            std::fs::write(dir.join(format!("{user}.password")), password)
                .expect("a password file");
        }
        KafkaSecurity {
            dir,
            ca_file,
            keystore,
            node_principal: "CN=127.0.0.1".to_owned(),
            users,
        }
    }

    /// `SAGAPAY_KAFKA_CLIENT_CONFIG` of `user` (its password is in [`Self::password_file`]).
    pub fn client_config(&self, user: &str) -> String {
        format!(
            "security.protocol=SASL_SSL,sasl.mechanisms=SCRAM-SHA-512,sasl.username={user},\
             ssl.ca.location={}",
            self.ca_file.display()
        )
    }

    pub fn password_file(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{user}.password"))
    }

    /// The client overrides of `user`, password included.
    pub fn client_overrides(&self, user: &str) -> Vec<(String, String)> {
        let mut overrides =
            sagapay_messaging::kafka::parse_overrides(&self.client_config(user)).unwrap();
        let password = self
            .users
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("{user} is not a user of the cluster"));
        overrides.push(("sasl.password".to_owned(), password));
        overrides
    }

    fn admin_password(&self) -> &str {
        &self.users[0].1
    }

    /// The `--add-scram` arguments of Kafka's StorageTool: every user, known from the start.
    fn scram_arguments(&self) -> Vec<String> {
        self.users
            .iter()
            .flat_map(|(user, password)| {
                [
                    "--add-scram".to_owned(),
                    format!("SCRAM-SHA-512=[name={user},password={password}]"),
                ]
            })
            .collect()
    }

    /// `infra/kafka/secure.properties` for one node.
    fn properties(&self, port: u16, controller: u16) -> anyhow::Result<String> {
        let overlay = std::fs::read_to_string(repo_root().join("infra/kafka/secure.properties"))?;
        Ok(overlay
            .replace("@PORT@", &port.to_string())
            .replace("@CONTROLLER_PORT@", &controller.to_string())
            .replace("@ADMIN_PASSWORD@", self.admin_password())
            .replace("@KEYSTORE@", &self.keystore.display().to_string())
            .replace("@TRUSTSTORE@", &self.ca_file.display().to_string())
            .replace("@NODE_PRINCIPAL@", &self.node_principal))
    }
}

/// A secure one-node cluster on a port from `ports`, with a user for every service and for the
/// operators' tool, and namespace `ns`'s ACLs applied by the administrator (the operator's one
/// step before the first start, `sagapayctl kafka acls --apply`).
pub async fn secure_kafka(
    ns: &sagapay_domain::Namespace,
    ports: std::ops::Range<u16>,
) -> (KafkaSecurity, KafkaCluster) {
    let mut users = sagapay_service_kit::SERVICES.to_vec();
    users.push("sagapayctl");
    let security = KafkaSecurity::new(&users);
    let cluster = tokio::task::block_in_place(|| KafkaCluster::start_secure(1, ports, &security))
        .expect("a Kafka cluster with TLS, SASL and ACLs");
    let admin = security.admin(&cluster);
    sagapay_messaging::acl::apply(&admin, &sagapayctl::acls::grants(ns, "sagapayctl"))
        .await
        .expect("the namespace's ACLs, applied by the administrator");
    (security, cluster)
}

impl KafkaSecurity {
    /// The administrator's (a super user's) settings on `cluster`.
    pub fn admin(&self, cluster: &KafkaCluster) -> sagapay_messaging::KafkaSettings {
        sagapay_messaging::KafkaSettings {
            brokers: cluster.bootstrap(),
            client_overrides: self.client_overrides("admin"),
            ..Default::default()
        }
    }
}

impl Drop for KafkaSecurity {
    fn drop(&mut self) {
        remove_unless_failed(&self.dir, "Kafka's credentials");
    }
}

impl KafkaCluster {
    /// Formats and starts `nodes` nodes (1 or 3) on ports from `ports`, and waits until every
    /// node is in the cluster's metadata.
    pub fn start(nodes: usize, ports: std::ops::Range<u16>) -> anyhow::Result<Self> {
        Self::start_with(nodes, ports, None)
    }

    /// [`KafkaCluster::start`], every listener secured as `infra/kafka/secure.properties`
    /// says with `security`'s certificates and users, and no ACL yet: only the
    /// administrator may do anything until ACLs are applied.
    pub fn start_secure(
        nodes: usize,
        ports: std::ops::Range<u16>,
        security: &KafkaSecurity,
    ) -> anyhow::Result<Self> {
        Self::start_with(nodes, ports, Some(security))
    }

    fn start_with(
        nodes: usize,
        ports: std::ops::Range<u16>,
        security: Option<&KafkaSecurity>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(nodes == 1 || nodes == 3, "a cluster of 1 or 3 nodes");
        let libs = repo_root().join(".local/kafka/libs");
        anyhow::ensure!(
            libs.join(".pom.sha256").exists(),
            "Kafka's jars are missing in {}: run scripts/stack.sh up",
            libs.display()
        );
        let dir = scratch_dir("kafka");
        let mut chosen: Vec<u16> = Vec::new();
        let mut pick = || loop {
            let p = crate::free_port(ports.clone());
            if !chosen.contains(&p) {
                chosen.push(p);
                return p;
            }
        };
        let ports: Vec<(u16, u16)> = (0..nodes).map(|_| (pick(), pick())).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, controller))| format!("{}@127.0.0.1:{controller}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let template = std::fs::read_to_string(repo_root().join("infra/kafka/server.properties"))?;
        let (replicas, min_isr) = if nodes == 3 { ("3", "2") } else { ("1", "1") };
        let cluster_id = cluster_id();
        let mut cluster = KafkaCluster {
            dir: dir.clone(),
            nodes: Vec::new(),
            admin_overrides: security
                .map(|s| s.client_overrides("admin"))
                .unwrap_or_default(),
        };
        for (i, (port, controller)) in ports.iter().enumerate() {
            let id = i + 1;
            let data = dir.join(format!("data-{id}"));
            let properties = dir.join(format!("server-{id}.properties"));
            std::fs::write(
                &properties,
                template
                    .replace("@NODE_ID@", &id.to_string())
                    .replace("@VOTERS@", &voters)
                    .replace("@PORT@", &port.to_string())
                    .replace("@CONTROLLER_PORT@", &controller.to_string())
                    .replace("@DATA_DIR@", &data.display().to_string())
                    .replace("@REPLICAS@", replicas)
                    .replace("@MIN_ISR@", min_isr)
                    + &security
                        .map(|s| s.properties(*port, *controller))
                        .transpose()?
                        .unwrap_or_default(),
            )?;
            let logs = dir.join(format!("logs-{id}"));
            std::fs::create_dir_all(&logs)?;
            let output = java(&logs)
                .args(["kafka.tools.StorageTool", "format"])
                .arg(format!("--cluster-id={cluster_id}"))
                .arg(format!("--config={}", properties.display()))
                .args(security.map(|s| s.scram_arguments()).unwrap_or_default())
                .output()
                .context("running Kafka's StorageTool")?;
            anyhow::ensure!(
                output.status.success(),
                "formatting node {id} (cluster id {cluster_id}): {}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            cluster.nodes.push(KafkaNode {
                port: *port,
                properties,
                logs,
                process: None,
            });
        }
        for node in 0..nodes {
            cluster.launch(node)?;
        }
        cluster.wait_all_up()?;
        Ok(cluster)
    }

    /// The bootstrap list of every node (`SAGAPAY_KAFKA_BROKERS`).
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    fn launch(&mut self, node: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[node];
        anyhow::ensure!(n.process.is_none(), "node {} is running", node + 1);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.logs.join("stdout.log"))?;
        let child = java(&n.logs)
            .arg("kafka.Kafka")
            .arg(&n.properties)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting a Kafka node")?;
        n.process = Some(child);
        Ok(())
    }

    /// Waits until every node answers and the cluster's metadata lists them all.
    pub fn wait_all_up(&self) -> anyhow::Result<()> {
        for n in &self.nodes {
            wait(Duration::from_secs(90), "Kafka node's port", || {
                port_open(n.port)
            })?;
        }
        let settings = sagapay_messaging::KafkaSettings {
            brokers: self.bootstrap(),
            client_overrides: self.admin_overrides.clone(),
            ..Default::default()
        };
        let producer = settings.producer("cluster-check")?;
        let want = self.nodes.len();
        wait(
            Duration::from_secs(90),
            "every Kafka node in the metadata",
            || {
                use rdkafka::producer::Producer;
                producer
                    .client()
                    .fetch_metadata(None, Duration::from_secs(2))
                    .is_ok_and(|md| md.brokers().len() == want)
            },
        )
    }

    /// SIGKILL of node `node` (0-based): no warning, nothing flushed.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM of node `node`, waiting for its clean exit (a controlled shutdown).
    pub fn stop(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].process.take() {
            terminate(&mut child, Duration::from_secs(60));
        }
    }

    /// Starts node `node` again on its data, and waits until the cluster lists it.
    pub fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        self.launch(node)?;
        self.wait_all_up()
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        remove_unless_failed(&self.dir, "Kafka");
    }
}

/// Removes a server's directory, or keeps it for a look when the test is failing.
fn remove_unless_failed(dir: &Path, what: &str) {
    if std::thread::panicking() {
        eprintln!("{what}'s files and logs are kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A cluster id as Kafka's own `random-uuid` makes it: a random UUID in URL-safe base64 that
/// does not begin with `-` (the StorageTool's argument parser reads such an id as an option
/// and refuses to format: one id in 64, a chaos run in 22 failed so before this).
fn cluster_id() -> String {
    use base64::Engine;
    loop {
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(uuid::Uuid::new_v4().as_bytes());
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// `java` with the broker's class path and logging, logging into `logs`.
fn java(logs: &Path) -> Command {
    let root = repo_root();
    let mut command = Command::new("java");
    command
        .args([
            "-Xms128m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
        ])
        .arg("-Djava.awt.headless=true")
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            root.join("infra/kafka/log4j2.properties").display()
        ))
        .arg(format!("-Dkafka.logs.dir={}", logs.display()))
        .arg("-cp")
        // java expands the wildcard itself.
        .arg(format!("{}/*", root.join(".local/kafka/libs").display()));
    command
}

/// A Redis of the test's own (the machine's `redis-server`, nothing persisted), so that
/// stopping it disturbs no other test; killed when dropped.
pub struct RedisServer {
    child: Child,
    /// Its certificate and key, when TLS.
    dir: Option<PathBuf>,
    /// Its URL (`redis://` or, with TLS, `rediss://:<password>@`).
    pub url: String,
}

impl RedisServer {
    /// Plain, without a password, on `port`.
    pub fn start(port: u16) -> anyhow::Result<RedisServer> {
        Self::launch(
            port,
            &["--port", &port.to_string()],
            format!("redis://127.0.0.1:{port}"),
        )
    }

    /// TLS only (no plain port), on a port from `ports`, with `cert` (for 127.0.0.1) and a
    /// password; clients are not asked for certificates.
    pub fn start_tls(
        ports: std::ops::Range<u16>,
        cert: &crate::tls::ServerCert,
        password: &str,
    ) -> anyhow::Result<RedisServer> {
        let port = crate::free_port(ports);
        let dir = scratch_dir("redis-tls");
        let (cert_file, key_file) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&cert_file, &cert.cert_pem)?;
        std::fs::write(&key_file, &cert.key_pem)?;
        let (cert_file, key_file) = (
            cert_file.display().to_string(),
            key_file.display().to_string(),
        );
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert_file,
            "--tls-key-file",
            &key_file,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
        ];
        let mut server = Self::launch(
            port,
            &args,
            format!("rediss://:{password}@127.0.0.1:{port}"),
        )?;
        server.dir = Some(dir);
        Ok(server)
    }

    fn launch(port: u16, args: &[&str], url: String) -> anyhow::Result<RedisServer> {
        let child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server (installed by scripts/stack.sh)")?;
        let server = RedisServer {
            child,
            dir: None,
            url,
        };
        wait(Duration::from_secs(10), "Redis's port", || port_open(port))?;
        Ok(server)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            remove_unless_failed(dir, "Redis");
        }
    }
}

/// A PostgreSQL server of the test's own (the machine's PostgreSQL binaries, a fresh data
/// directory, trust authentication on loopback), run as the `postgres` user when the test
/// runs as root.
pub struct PgServer {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    /// Serves TLS with this certificate (files in `dir`).
    tls: bool,
}

impl PgServer {
    pub fn start(ports: std::ops::Range<u16>) -> anyhow::Result<Self> {
        Self::start_with(ports, None)
    }

    /// A server that also speaks TLS, presenting `cert`.
    pub fn start_with_tls(
        ports: std::ops::Range<u16>,
        cert: &crate::tls::ServerCert,
    ) -> anyhow::Result<Self> {
        Self::start_with(ports, Some(cert))
    }

    fn start_with(
        ports: std::ops::Range<u16>,
        cert: Option<&crate::tls::ServerCert>,
    ) -> anyhow::Result<Self> {
        let bin = pg_bin_dir()?;
        let dir = scratch_dir("postgres");
        let data = dir.join("data");
        if let Some(cert) = cert {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(dir.join("server.crt"), &cert.cert_pem)?;
            std::fs::write(dir.join("server.key"), &cert.key_pem)?;
            // PostgreSQL refuses a key others can read.
            std::fs::set_permissions(
                dir.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )?;
        }
        if as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?;
            anyhow::ensure!(status.success(), "chown of {}", dir.display());
        }
        let status = pg_command(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "sagapay", "--auth=trust", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("initdb")?;
        anyhow::ensure!(status.success(), "initdb: {status}");
        let port = crate::free_port(ports);
        let server = PgServer {
            dir,
            port,
            bin,
            tls: cert.is_some(),
        };
        server.pg_ctl(&["start"])?;
        Ok(server)
    }

    /// `postgres://sagapay:sagapay@127.0.0.1:<port>` (`SAGAPAY_POSTGRES_URL`).
    pub fn url(&self) -> String {
        format!("postgres://sagapay:sagapay@127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A fast restart: connections are cut, the server is back when this returns.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["restart", "-m", "fast"])
    }

    fn pg_ctl(&self, action: &[&str]) -> anyhow::Result<()> {
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=300",
            self.port,
            self.dir.display()
        );
        if self.tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                self.dir.display()
            ));
        }
        let status = pg_command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-t", "60", "-o", &options, "-l"])
            .arg(self.dir.join("server.log"))
            .args(action)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("pg_ctl")?;
        anyhow::ensure!(status.success(), "pg_ctl {action:?}: {status}");
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        remove_unless_failed(&self.dir, "PostgreSQL");
    }
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program` of the PostgreSQL binaries, as the `postgres` user when we are root.
fn pg_command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin`.
fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL's binaries (/usr/lib/postgresql): run scripts/stack.sh up")?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .context("no PostgreSQL version in /usr/lib/postgresql")
}

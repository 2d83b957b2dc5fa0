//! A real etcd for tests: started on 127.0.0.1 with free ports and a temporary data dir,
//! killed by pid on drop. Optionally with TLS (certificates made with rcgen), started later
//! than its clients, or frozen (SIGSTOP) and thawed (SIGCONT).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Plain HTTP `/metrics`, also with TLS.
    pub metrics_port: u16,
    child: Option<Child>,
    cluster: String,
    data: PathBuf,
    /// Server certificate and key (PEM files): clients reach it over TLS.
    tls: Option<(PathBuf, PathBuf)>,
}

pub struct Etcd {
    pub members: Vec<Member>,
    /// The CA that signed the members' certificates, when they serve TLS.
    pub tls_ca: Option<PathBuf>,
    /// The root user's password, once auth is enabled.
    root_password: Option<String>,
    _dir: tempfile::TempDir,
}

/// A CA and a certificate for 127.0.0.1 and localhost, as PEM files in `dir`: (ca, cert, key).
/// The two have different names: OpenSSL takes a certificate whose subject is its issuer's
/// for a self-signed one.
pub fn pki(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "steadfast test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("etcd.pem"),
        dir.join("etcd.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary() -> String {
    let found = Command::new("sh")
        .arg("-c")
        .arg("command -v etcd")
        .output()
        .ok();
    match found {
        Some(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_owned(),
        _ => panic!("etcd is not installed: run ./scripts/test.sh, which installs etcd-server"),
    }
}

impl Member {
    fn spawn(&mut self) {
        let log = std::fs::File::create(self.data.with_extension("log")).unwrap();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut cmd = Command::new(binary());
        if let Some((cert, key)) = &self.tls {
            cmd.args(["--cert-file", cert.to_str().unwrap()])
                .args(["--key-file", key.to_str().unwrap()]);
        }
        let child = cmd
            .args(["--name", &self.name])
            .args(["--data-dir", self.data.to_str().unwrap()])
            .args([
                "--listen-client-urls",
                &format!("{scheme}://127.0.0.1:{}", self.client_port),
            ])
            .args([
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{}", self.client_port),
            ])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", self.metrics_port),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer_port),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer_port),
            ])
            .args(["--initial-cluster", &self.cluster])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "steadfast-test",
            ])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    /// Kills the member (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Freezes the member (SIGSTOP): its sockets stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// The value of a metric without labels from the member's `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .unwrap();
        let req = "GET /metrics HTTP/1.1\r\nhost: etcd\r\nconnection: close\r\n\r\n";
        s.write_all(req.as_bytes()).await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }
}

impl Etcd {
    /// One member.
    pub async fn start() -> Etcd {
        Etcd::cluster(1).await
    }

    /// `n` members forming one cluster.
    pub async fn cluster(n: usize) -> Etcd {
        let mut etcd = Etcd::reserve(n, false);
        etcd.launch().await;
        etcd
    }

    /// One member serving TLS with a certificate from a CA made for the test.
    pub async fn start_tls() -> Etcd {
        let mut etcd = Etcd::reserve(1, true);
        etcd.launch().await;
        etcd
    }

    /// `n` members with their ports and data dirs chosen, not started: see [`Etcd::launch`].
    pub fn reserve(n: usize, tls: bool) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let (tls_ca, tls) = if tls {
            let (ca, cert, key) = pki(dir.path());
            (Some(ca), Some((cert, key)))
        } else {
            (None, None)
        };
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let members: Vec<Member> = ports
            .iter()
            .enumerate()
            .map(|(i, (c, p))| Member {
                name: format!("m{i}"),
                client_port: *c,
                peer_port: *p,
                metrics_port: free_port(),
                child: None,
                cluster: cluster.clone(),
                data: dir.path().join(format!("m{i}")),
                tls: tls.clone(),
            })
            .collect();
        Etcd {
            members,
            tls_ca,
            root_password: None,
            _dir: dir,
        }
    }

    /// Starts every member and waits until a read succeeds.
    pub async fn launch(&mut self) {
        for m in &mut self.members {
            m.spawn();
        }
        self.wait_ready().await;
    }

    /// Adds the user `root` (with role root) and `user` (with read-write on every key), then
    /// enables auth: from then on, every request needs a user and a password.
    pub async fn enable_auth(&mut self, user: &str, password: &str) {
        use etcd_client::{Permission, PermissionType};
        let root_password = "root-pw".to_owned();
        let mut c = self.client().await;
        c.user_add("root", root_password.as_str(), None)
            .await
            .unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.role_add("app").await.unwrap();
        c.role_grant_permission(
            "app",
            Permission::new(PermissionType::Readwrite, "").with_from_key(),
        )
        .await
        .unwrap();
        c.user_add(user, password, None).await.unwrap();
        c.user_grant_role(user, "app").await.unwrap();
        c.auth_enable().await.unwrap();
        self.root_password = Some(root_password);
    }

    fn options(&self) -> Option<etcd_client::ConnectOptions> {
        let mut opts = etcd_client::ConnectOptions::new();
        if let Some(ca) = &self.tls_ca {
            let pem = std::fs::read(ca).unwrap();
            opts = opts.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(pem)),
            );
        }
        if let Some(pw) = &self.root_password {
            opts = opts.with_user("root", pw.as_str());
        }
        Some(opts)
    }

    fn client_endpoints(&self) -> Vec<String> {
        let scheme = if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("{scheme}://{}", m.endpoint()))
            .collect()
    }

    /// Every member's client endpoint, comma-separated, for `etcd://`.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn url(&self, extra: &str) -> String {
        format!("etcd://{}{extra}", self.endpoints())
    }

    /// Restarts member `i` on the same ports and data dir.
    pub async fn restart(&mut self, i: usize) {
        self.members[i].kill();
        self.members[i].spawn();
        self.wait_ready().await;
    }

    /// Waits until a read succeeds through the live members (up to 30 s).
    pub async fn wait_ready(&self) {
        let eps = self.client_endpoints();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ok = async {
                let mut c = etcd_client::Client::connect(&eps, self.options())
                    .await
                    .ok()?;
                c.get("ready-probe", None).await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(2), ok)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A raw client, for checking what is in etcd.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.client_endpoints(), self.options())
            .await
            .unwrap()
    }

    /// A raw client of member `i` alone.
    /// The indices of the members that are not the leader, once the cluster has one.
    pub async fn followers(&self) -> Vec<usize> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut followers = Vec::new();
            for (i, m) in self.members.iter().enumerate() {
                if m.metric("etcd_server_is_leader").await == 0.0 {
                    followers.push(i);
                }
            }
            if followers.len() < self.members.len() {
                return followers;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no etcd leader in 10s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn member_client(&self, i: usize) -> etcd_client::Client {
        let scheme = if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        let eps = [format!("{scheme}://{}", self.members[i].endpoint())];
        etcd_client::Client::connect(eps, self.options())
            .await
            .unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

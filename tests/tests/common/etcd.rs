//! A real etcd for tests: started on 127.0.0.1 with free ports and a temporary data dir,
//! killed by pid on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
    cluster: String,
    data: PathBuf,
}

pub struct Etcd {
    pub members: Vec<Member>,
    _dir: tempfile::TempDir,
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
        let child = Command::new(binary())
            .args(["--name", &self.name])
            .args(["--data-dir", self.data.to_str().unwrap()])
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", self.client_port),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", self.client_port),
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
}

impl Etcd {
    /// One member.
    pub async fn start() -> Etcd {
        Etcd::cluster(1).await
    }

    /// `n` members forming one cluster.
    pub async fn cluster(n: usize) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Member> = ports
            .iter()
            .enumerate()
            .map(|(i, (c, p))| Member {
                name: format!("m{i}"),
                client_port: *c,
                peer_port: *p,
                child: None,
                cluster: cluster.clone(),
                data: dir.path().join(format!("m{i}")),
            })
            .collect();
        for m in &mut members {
            m.spawn();
        }
        let etcd = Etcd { members, _dir: dir };
        etcd.wait_ready().await;
        etcd
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
        let eps: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::endpoint)
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ok = async {
                let mut c = etcd_client::Client::connect(&eps, None).await.ok()?;
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
        let eps: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::endpoint)
            .collect();
        etcd_client::Client::connect(&eps, None).await.unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

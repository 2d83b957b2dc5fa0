//! A real Nacos-protocol server for tests: rnacos, started on 127.0.0.1 with free ports and
//! a temporary data dir, killed by pid on drop. `scripts/test.sh` installs it.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Nacos {
    pub http_port: u16,
    pub grpc_port: u16,
    child: Option<Child>,
    data: tempfile::TempDir,
    /// The admin user and password, when the server requires authentication.
    auth: Option<(String, String)>,
}

/// A free port whose gRPC neighbour (+1000, as Nacos clients assume by default) is in range.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port <= 64000 {
            return port;
        }
    }
}

fn binary() -> String {
    if let Ok(bin) = std::env::var("RNACOS_BIN") {
        return bin;
    }
    // Where `cargo install` put it, when that is not on the PATH.
    let cargo_home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let installed = format!("{cargo_home}/bin/rnacos");
    if std::path::Path::new(&installed).exists() {
        return installed;
    }
    "rnacos".into()
}

impl Nacos {
    /// Starts rnacos and waits until it answers.
    pub async fn start() -> Nacos {
        Self::start_with(None).await
    }

    /// Starts rnacos with authentication on, its admin user being `user` / `password`.
    pub async fn start_with_auth(user: &str, password: &str) -> Nacos {
        Self::start_with(Some((user.into(), password.into()))).await
    }

    async fn start_with(auth: Option<(String, String)>) -> Nacos {
        let mut n = Nacos {
            http_port: free_port(),
            grpc_port: free_port(),
            child: None,
            data: tempfile::tempdir().unwrap(),
            auth,
        };
        // A port taken between our probe and rnacos's bind (tests start servers in
        // parallel) makes it exit, and rnacos 0.8.8 now and then panics in a thread while it
        // starts (an unset store in `raftapply.rs`, seen with auth on) and never answers:
        // start it again, on other ports with a fresh data dir.
        for _ in 0..2 {
            n.spawn();
            if n.ready(true).await {
                return n;
            }
            n.kill();
            n.data = tempfile::tempdir().unwrap();
            n.http_port = free_port();
            n.grpc_port = free_port();
        }
        n.launch().await;
        n
    }

    async fn launch(&mut self) {
        self.spawn();
        self.ready(false).await;
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.data.path().join("rnacos.log")).unwrap();
        let mut cmd = Command::new(binary());
        if let Some((user, password)) = &self.auth {
            cmd.env("RNACOS_ENABLE_OPEN_API_AUTH", "true")
                .env("RNACOS_INIT_ADMIN_USERNAME", user)
                .env("RNACOS_INIT_ADMIN_PASSWORD", password);
        }
        let child = cmd
            .env("RNACOS_SDK_HOST", "127.0.0.1")
            .env("RNACOS_HTTP_PORT", self.http_port.to_string())
            .env("RNACOS_GRPC_PORT", self.grpc_port.to_string())
            .env("RNACOS_HTTP_CONSOLE_PORT", "0")
            .env("RNACOS_DATA_DIR", self.data.path())
            .env("RUST_LOG", "warn")
            .current_dir(self.data.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start rnacos ({}): {e}; run ./scripts/test.sh, which installs it",
                    binary()
                )
            });
        self.child = Some(child);
    }

    /// Waits until it answers (and, with auth, takes its admin's login). When it exits or
    /// panics first: false if `may_exit`, else (exits) a panic with its log.
    async fn ready(&mut self, may_exit: bool) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = self.try_http("GET", "/health", "").await {
                // With auth, the admin user is created a moment after the server answers.
                let Some((user, password)) = &self.auth else {
                    return true;
                };
                let login = format!(
                    "/nacos/v1/auth/login?username={}&password={}",
                    encode(user),
                    encode(password)
                );
                if let Ok((200, _)) = self.try_http("POST", &login, "").await {
                    return true;
                }
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let log =
                || std::fs::read_to_string(self.data.path().join("rnacos.log")).unwrap_or_default();
            if let Some(status) = exited {
                assert!(may_exit, "rnacos exited ({status}): {}", log());
                return false;
            }
            if may_exit && log().contains("panicked") {
                return false;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "rnacos did not answer /health within 20 s: {}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The registry URL, with `extra` query options (`&group=..`).
    pub fn url(&self, extra: &str) -> String {
        format!(
            "nacos://127.0.0.1:{}?grpc_port={}{extra}",
            self.http_port, self.grpc_port
        )
    }

    /// Kills the server (kill -9); its data dir stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data dir.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    async fn try_http(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.http_port).parse().unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return Err(std::io::Error::other("no HTTP response"));
        };
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        // Chunked bodies: keep only the data lines.
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok((code, body))
    }

    /// One request to Nacos's HTTP open API.
    pub async fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.try_http(method, path, body).await.unwrap()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for Nacos {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

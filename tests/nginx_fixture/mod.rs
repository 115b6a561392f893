//! A real nginx for tests: started from a main config in a temp dir (pid, logs and temp
//! paths inside it) that `include`s the site file under test, listening on a free
//! loopback port, with two tiny upstream HTTP servers ("blue" and "green") on free
//! loopback ports. Waits are bounded; nginx is always stopped on drop.
//!
//! It must never touch a system nginx (no default paths, no port 80) and never skip: when
//! nginx is not installed it panics saying how to install it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The nginx binary: `$RIPCORD_NGINX`, else `nginx` on PATH or in the usual sbin dirs.
pub fn nginx_bin() -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var_os("RIPCORD_NGINX") {
        Some(p) => vec![PathBuf::from(p)],
        None => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
            dirs.extend(
                ["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"].map(PathBuf::from),
            );
            dirs.into_iter().map(|d| d.join("nginx")).collect()
        }
    };
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed (not on PATH, in /usr/sbin, or at $RIPCORD_NGINX): install \
             it with `apt-get install -y nginx`; these tests need a real nginx and do not skip"
            )
        })
}

/// A loopback port nothing listens on right now, never the same twice in one test binary
/// (the kernel may hand a released port out again at once).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no fresh loopback port in 100 tries");
}

/// A minimal HTTP server answering every request with `200` and a fixed body.
pub struct Backend {
    pub addr: String,
    pub hits: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn start(body: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicU64::new(0));
        let (stop2, hits2) = (stop.clone(), hits.clone());
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let hits = hits2.clone();
                thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes());
                    let _ = conn.shutdown(Shutdown::Write);
                });
            }
        });
        Backend {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ =
            TcpStream::connect_timeout(&self.addr.parse().expect("addr"), Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One raw HTTP/1.1 GET without keep-alive: `(status, body)`.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("read: {e}"))?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {resp:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// A site file in the runbook's layout: `upstream app` with a primary and a `backup`
/// server, and a server block proxying to it.
pub fn primary_backup_site(listen_port: u16, primary: &str, backup: &str) -> String {
    format!(
        "# the user's site file; ripcord owns only `upstream app`\n\
         upstream app {{\n    server {primary} max_fails=3 fail_timeout=10s;\n    server {backup} backup;\n    keepalive 4;\n}}\n\n\
         server {{\n    listen 127.0.0.1:{listen_port};\n    location / {{\n        proxy_pass http://app;\n    }}\n}}\n"
    )
}

/// A site file with one server line.
pub fn one_server_site(listen_port: u16, server: &str) -> String {
    format!(
        "upstream app {{\n\tserver {server};\n}}\n\n\
         server {{\n\tlisten 127.0.0.1:{listen_port};\n\tlocation / {{ proxy_pass http://app; }}\n}}\n"
    )
}

/// A running nginx, foreground (`daemon off;`) child of the test.
pub struct Nginx {
    pub bin: PathBuf,
    pub prefix: PathBuf,
    pub conf: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Nginx {
    /// Writes `PREFIX/nginx.conf` including `include` (a file or a glob) and starts nginx
    /// with it; returns once `port` accepts connections (at most 10 s).
    pub fn start(prefix: &Path, include: &str, port: u16) -> Nginx {
        Nginx::start_with(prefix, include, port, 1, "")
    }

    /// [`Nginx::start`] with `workers` worker processes and `log_params` after the
    /// access log's path (e.g. `combined buffer=64k flush=1s`).
    pub fn start_with(
        prefix: &Path,
        include: &str,
        port: u16,
        workers: usize,
        log_params: &str,
    ) -> Nginx {
        let bin = nginx_bin();
        let p = prefix.display();
        std::fs::create_dir_all(prefix.join("tmp")).expect("create tmp dir");
        let conf = prefix.join("nginx.conf");
        let text = format!(
            "daemon off;\nmaster_process on;\nworker_processes {workers};\npid {p}/nginx.pid;\nerror_log {p}/error.log notice;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n    access_log {p}/access.log {log_params};\n    client_body_temp_path {p}/tmp/client_body;\n    proxy_temp_path {p}/tmp/proxy;\n    \
             fastcgi_temp_path {p}/tmp/fastcgi;\n    uwsgi_temp_path {p}/tmp/uwsgi;\n    scgi_temp_path {p}/tmp/scgi;\n    include {include};\n}}\n"
        );
        std::fs::write(&conf, text).expect("write nginx.conf");
        let mut nginx = Nginx {
            bin,
            prefix: prefix.to_path_buf(),
            conf,
            port,
            child: None,
        };
        let child = Command::new(&nginx.bin)
            .args(&nginx.base_args()[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nginx.bin.display()));
        nginx.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = nginx.child.as_mut().map(|c| c.try_wait()) {
                nginx.child = None;
                panic!("nginx exited at startup ({status}): {}", nginx.error_log());
            }
            if TcpStream::connect_timeout(
                &([127, 0, 0, 1], port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return nginx;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {port} within 10 s: {}",
                nginx.error_log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nginx -p PREFIX -c CONF -e ERRLOG`: every command aimed at this instance.
    pub fn base_args(&self) -> Vec<String> {
        let p = |x: &Path| x.display().to_string();
        vec![
            p(&self.bin),
            "-p".into(),
            p(&self.prefix),
            "-c".into(),
            p(&self.conf),
            "-e".into(),
            p(&self.prefix.join("error.log")),
        ]
    }

    /// The master's pid and its workers'.
    pub fn pids(&self) -> Vec<u32> {
        let Some(master) = self.child.as_ref().map(Child::id) else {
            return Vec::new();
        };
        let mut pids = vec![master];
        pids.extend(children_of(master));
        pids
    }

    pub fn test_command(&self) -> Vec<String> {
        let mut v = self.base_args();
        v.push("-t".into());
        v
    }

    pub fn reload_command(&self) -> Vec<String> {
        let mut v = self.base_args();
        v.extend(["-s".into(), "reload".into()]);
        v
    }

    pub fn get(&self) -> Result<(u16, String), String> {
        http_get(self.port, "/")
    }

    /// Polls until nginx has answered `200 body` to every request for 300 ms, at most
    /// `within`; panics with the last answer otherwise. One answer is not enough: after a
    /// reload the master starts new workers and only about 100 ms later tells the old ones
    /// to stop accepting, so the old slot keeps answering some requests for a moment.
    pub fn wait_for_body(&self, body: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let mut stable_since: Option<Instant> = None;
        loop {
            let got = self.get();
            if matches!(&got, Ok((200, b)) if b == body) {
                let since = *stable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(300) {
                    return;
                }
            } else {
                stable_since = None;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not settle on {body:?} within {within:?}: last {got:?}; nginx error log:\n{}",
                self.error_log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asserts nginx keeps answering `body` for `for_` (it was not reloaded onto another
    /// slot).
    pub fn assert_serves(&self, body: &str, for_: Duration) {
        let until = Instant::now() + for_;
        while Instant::now() < until {
            let got = self.get();
            assert!(
                matches!(&got, Ok((200, b)) if b == body),
                "expected {body:?}, got {got:?}; nginx error log:\n{}",
                self.error_log()
            );
            thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("error.log"))
            .unwrap_or_else(|e| format!("(no error log: {e})"))
    }
}

/// Pids whose parent is `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let child: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // The command name may hold spaces and parens; fields resume after the last `)`.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == pid).then_some(child)
    })
    .collect()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        // SIGTERM is nginx's fast shutdown: the master stops its workers, then exits.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // Killing only the master would orphan its workers on our ports; kill them first.
        for worker in children_of(pid) {
            let _ = Command::new("kill")
                .args(["-KILL", &worker.to_string()])
                .status();
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

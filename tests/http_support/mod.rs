//! Helpers of the HTTP engine tests: a real llama-server (built once by
//! scripts/llama-tools.sh, cached under target/) on 127.0.0.1 on a free port,
//! stopped by pid; and a tiny fault-injecting TCP proxy in front of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// llama-server, built by scripts/llama-tools.sh unless COTFORGE_LLAMA_SERVER names one.
pub fn llama_server() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("COTFORGE_LLAMA_SERVER") {
            return PathBuf::from(p);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llama-tools.sh");
        let o = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/llama-tools.sh");
        assert!(
            o.status.success(),
            "scripts/llama-tools.sh failed (it builds llama-server from the llama-cpp-python sdist)"
        );
        let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
        PathBuf::from(dir).join("llama-server")
    })
    .clone()
}

#[allow(unused_imports)]
pub use cotforge::engine::http::local::{free_port, LocalServer, LocalServerOptions};

/// llama-server on the test model: `slots` slots, 2 threads, legacy (non-jinja)
/// chat templates as the native engine applies them.
pub fn start_server(model: &Path, slots: usize) -> LocalServer {
    start_server_with(model, slots, &[])
}

pub fn start_server_with(model: &Path, slots: usize, extra: &[&str]) -> LocalServer {
    let mut args = vec!["--no-jinja".to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    LocalServer::start(
        &llama_server(),
        model,
        LocalServerOptions {
            threads: 2,
            slots,
            n_ctx: (2048 * slots).max(8192),
            extra: args,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A bare HTTP/1.1 GET: (status, body), None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// What the proxy does with the next connections.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Forward bytes both ways.
    Pass,
    /// Answer this status (with `Retry-After: 0` for 429) and close.
    Status(u16),
    /// Accept, read the request, never answer.
    Hang,
    /// Refuse: close at once.
    Close,
}

/// A TCP proxy that injects faults per connection: the first `n` connections
/// get the queued faults in order, later ones `default`.
pub struct Proxy {
    pub port: u16,
    queue: Arc<Mutex<std::collections::VecDeque<Fault>>>,
    default: Arc<Mutex<Fault>>,
    /// Reject (400) requests whose body contains these bytes.
    reject_body: Arc<Mutex<Option<Vec<u8>>>>,
    pub connections: Arc<AtomicUsize>,
    pub injected: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().unwrap().port();
        let p = Self {
            port,
            queue: Arc::default(),
            default: Arc::new(Mutex::new(Fault::Pass)),
            reject_body: Arc::default(),
            connections: Arc::default(),
            injected: Arc::default(),
            stop: Arc::default(),
        };
        let (queue, default, reject, conns, injected, stop) = (
            p.queue.clone(),
            p.default.clone(),
            p.reject_body.clone(),
            p.connections.clone(),
            p.injected.clone(),
            p.stop.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                conns.fetch_add(1, Ordering::Relaxed);
                let rules = Rules {
                    queue: queue.clone(),
                    default: default.clone(),
                    reject: reject.clone(),
                    injected: injected.clone(),
                };
                std::thread::spawn(move || serve(client, upstream, rules));
            }
        });
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The next connections get these faults, in order.
    pub fn queue(&self, faults: &[Fault]) {
        self.queue.lock().unwrap().extend(faults.iter().cloned());
    }

    pub fn set_default(&self, f: Fault) {
        *self.default.lock().unwrap() = f;
    }

    pub fn reject_bodies_containing(&self, needle: Option<&[u8]>) {
        *self.reject_body.lock().unwrap() = needle.map(|n| n.to_vec());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Read one HTTP request (headers and a Content-Length body).
fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf);
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn respond(client: &mut TcpStream, code: u16) {
    let body =
        format!("{{\"error\":{{\"code\":{code},\"message\":\"injected by the test proxy\"}}}}");
    let extra = if code == 429 {
        "Retry-After: 0\r\n"
    } else {
        ""
    };
    let _ = write!(
        client,
        "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.shutdown(Shutdown::Both);
}

/// The proxy's shared settings, consulted for every request.
#[derive(Clone)]
struct Rules {
    queue: Arc<Mutex<std::collections::VecDeque<Fault>>>,
    default: Arc<Mutex<Fault>>,
    reject: Arc<Mutex<Option<Vec<u8>>>>,
    injected: Arc<AtomicUsize>,
}

impl Rules {
    /// The fault for the next request: the queue first, else the default.
    fn next(&self, body: &[u8]) -> Fault {
        let needle = self.reject.lock().unwrap().clone();
        let f = if needle.is_some_and(|n| body.windows(n.len()).any(|w| w == n.as_slice())) {
            Fault::Status(400)
        } else {
            let q = self.queue.lock().unwrap().pop_front();
            q.unwrap_or_else(|| self.default.lock().unwrap().clone())
        };
        if f != Fault::Pass {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        f
    }
}

/// One client connection, request by request (keep-alive), each request
/// passed upstream or answered with its fault.
fn serve(mut client: TcpStream, upstream: u16, rules: Rules) {
    let mut up: Option<TcpStream> = None;
    while let Some(req) = read_request(&mut client) {
        match rules.next(&req) {
            Fault::Pass => {
                if up.is_none() {
                    let Ok(u) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        break;
                    };
                    let mut down = u.try_clone().unwrap();
                    let mut back = client.try_clone().unwrap();
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut down, &mut back);
                        let _ = back.shutdown(Shutdown::Both);
                    });
                    up = Some(u);
                }
                if up.as_mut().is_some_and(|u| u.write_all(&req).is_err()) {
                    break;
                }
            }
            Fault::Status(code) => {
                respond(&mut client, code);
                break;
            }
            Fault::Hang => std::thread::sleep(Duration::from_secs(3600)),
            Fault::Close => break,
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    if let Some(u) = up {
        let _ = u.shutdown(Shutdown::Both);
    }
}

/// The head of a job on the HTTP engine: `seed`, `out`, `num_shards`,
/// `[engine]` with `n_parallel`, and `[engine.http]` on `url` with the TOML
/// lines `http` added.
pub fn http_job_head(
    seed: u64,
    out: &Path,
    num_shards: u32,
    n_parallel: usize,
    url: &str,
    http: &str,
) -> String {
    format!(
        "seed = {seed}\nout = {:?}\nnum_shards = {num_shards}\n\n[engine]\nkind = \"http\"\nn_parallel = {n_parallel}\n\n[engine.http]\nbase_urls = [{url:?}]\n{http}\n",
        out.display().to_string()
    )
}

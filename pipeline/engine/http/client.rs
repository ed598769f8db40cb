//! One server as the engine talks to it: a ureq agent, the bearer token,
//! bounded retries with exponential backoff and jitter, client-side rate
//! limits, and errors classified into what the engine does next
//! (retry, fail one sequence, or fail over to another server).

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::super::config::HttpConfig;
use super::super::sampling::splitmix64;

/// Why one HTTP exchange failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// No connection: refused, reset, DNS, TLS. The server is down or the URL is wrong.
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// Nothing arrived for `timeout_s`: a hung or overloaded server.
    #[error("no answer within {0:.0} s (timeout_s)")]
    Timeout(f64),
    #[error("HTTP {code}: {message}")]
    Status {
        code: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The body is not the JSON the API promises.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The engine gave up on the request (the sequence was edited or released).
    #[error("cancelled")]
    Cancelled,
}

impl RequestError {
    /// Worth another attempt: the same request may succeed later.
    pub fn transient(&self) -> bool {
        match self {
            RequestError::Unreachable(_)
            | RequestError::Timeout(_)
            | RequestError::Malformed(_) => true,
            RequestError::Status { code, .. } => *code >= 500 || *code == 429 || *code == 408,
            RequestError::Cancelled => false,
        }
    }
    /// The server itself looks gone (as opposed to refusing this request).
    pub fn server_gone(&self) -> bool {
        matches!(
            self,
            RequestError::Unreachable(_) | RequestError::Timeout(_)
        )
    }
}

/// Validate a base URL: `http(s)://host[:port][/prefix]`, no `/v1` suffix needed.
pub fn parse_base_url(url: &str) -> Result<String, String> {
    let u = url.trim();
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err("has no host".into());
    }
    if let Some((_, port)) = host.rsplit_once(':') {
        if !host.ends_with(']') && port.parse::<u16>().is_err() {
            return Err(format!("port {port:?} is not a number in 1..65535"));
        }
    }
    if u.contains(char::is_whitespace) {
        return Err("contains whitespace".into());
    }
    let mut base = u.trim_end_matches('/').to_string();
    // People paste the OpenAI base (`.../v1`); the endpoints below add it themselves.
    if let Some(b) = base.strip_suffix("/v1") {
        base = b.to_string();
    }
    Ok(base)
}

/// A token bucket: `rate` units per second, holding at most `burst`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            level: burst,
            at: Instant::now(),
        }
    }
    /// Take `n` units; returns how long to wait first (the level may go negative).
    fn take(&mut self, n: f64) -> Duration {
        let now = Instant::now();
        self.level =
            (self.level + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        self.level -= n;
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / self.rate)
        }
    }
}

/// Counters of one server (shared with the request threads).
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub failures: AtomicU64,
    pub rate_limited_ms: AtomicU64,
}

/// One server of the fleet.
pub struct Endpoint {
    pub url: String,
    agent: ureq::Agent,
    auth: Option<String>,
    timeout_s: f64,
    retries: u32,
    backoff_ms: u64,
    backoff_max_ms: u64,
    requests_bucket: Option<Mutex<Bucket>>,
    tokens_bucket: Option<Mutex<Bucket>>,
    pub counters: Counters,
    jitter: AtomicU64,
}

/// How long a wait for a retry sleeps between checks of the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(50);

impl Endpoint {
    pub fn new(url: &str, cfg: &HttpConfig) -> Result<Self, String> {
        let url = parse_base_url(url)?;
        let auth = match &cfg.api_key_env {
            Some(var) => {
                let key = std::env::var(var).map_err(|_| {
                    format!("the environment variable {var} (api_key_env) is unset")
                })?;
                Some(format!("Bearer {}", key.trim()))
            }
            None => None,
        };
        let t = Duration::from_secs_f64(cfg.timeout_s);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(t.min(Duration::from_secs(10))))
            .timeout_recv_response(Some(t))
            .timeout_per_read(Some(t))
            .max_idle_connections_per_host(256)
            .build()
            .into();
        Ok(Self {
            url,
            agent,
            auth,
            timeout_s: cfg.timeout_s,
            retries: cfg.retries,
            backoff_ms: cfg.backoff_ms,
            backoff_max_ms: cfg.backoff_max_ms,
            requests_bucket: cfg
                .rate_limit
                .requests_per_s
                .map(|r| Mutex::new(Bucket::new(r, r.max(1.0)))),
            tokens_bucket: cfg.rate_limit.tokens_per_min.map(|r| {
                let per_s = r / 60.0;
                Mutex::new(Bucket::new(per_s, r.max(1.0)))
            }),
            counters: Counters::default(),
            jitter: AtomicU64::new(splitmix64(std::process::id() as u64)),
        })
    }

    /// Wait for the rate limits to admit a request of `tokens` tokens.
    fn admit(&self, tokens: usize, cancel: Option<&AtomicBool>) -> Result<(), RequestError> {
        let mut wait = Duration::ZERO;
        if let Some(b) = &self.requests_bucket {
            if let Ok(mut b) = b.lock() {
                wait = wait.max(b.take(1.0));
            }
        }
        if let Some(b) = &self.tokens_bucket {
            if let Ok(mut b) = b.lock() {
                wait = wait.max(b.take(tokens as f64));
            }
        }
        if !wait.is_zero() {
            self.counters
                .rate_limited_ms
                .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
            sleep_unless_cancelled(wait, cancel)?;
        }
        Ok(())
    }

    /// Wait before retry `attempt` (0-based): exponential, jittered to [half, all].
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let bound = self
            .backoff_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(self.backoff_max_ms);
        let r = splitmix64(self.jitter.fetch_add(1, Ordering::Relaxed));
        let u = (r >> 11) as f64 / (1u64 << 53) as f64;
        let d = Duration::from_secs_f64(bound as f64 / 1000.0 * (0.5 + 0.5 * u));
        // A server asking for more (429 Retry-After) gets it, within reason.
        match retry_after {
            Some(ra) => d.max(ra.min(Duration::from_secs(60))),
            None => d,
        }
    }

    /// After a failed attempt `attempt` (0-based): sleep and return true when
    /// the error is transient and retries are left, else false.
    pub fn retry_wait(
        &self,
        attempt: u32,
        e: &RequestError,
        cancel: Option<&AtomicBool>,
    ) -> Result<bool, RequestError> {
        if !e.transient() || attempt >= self.retries {
            if *e != RequestError::Cancelled {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(false);
        }
        let retry_after = match e {
            RequestError::Status { retry_after, .. } => *retry_after,
            _ => None,
        };
        tracing::debug!(url = %self.url, attempt, "retrying after: {e}");
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        sleep_unless_cancelled(self.backoff(attempt, retry_after), cancel)?;
        Ok(true)
    }

    /// Run `f` with the retry policy: transient errors are retried with
    /// backoff, the others (and the last transient one) are returned.
    pub fn with_retries<T>(
        &self,
        cancel: Option<&AtomicBool>,
        mut f: impl FnMut() -> Result<T, RequestError>,
    ) -> Result<T, RequestError> {
        let mut attempt = 0;
        loop {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(RequestError::Cancelled);
            }
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            match f() {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if !self.retry_wait(attempt, &e, cancel)? {
                        return Err(e);
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// POST `body` as compact JSON (ureq's `send_json` pretty-prints,
    /// which doubles the bytes of a prompt's token list).
    fn send(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<ureq::http::Response<ureq::Body>, RequestError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| RequestError::Malformed(format!("request: {e}")))?;
        let mut r = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("Content-Type", "application/json");
        if let Some(a) = &self.auth {
            r = r.header("Authorization", a);
        }
        r.send(&bytes[..]).map_err(|e| self.map_err(e))
    }

    fn map_err(&self, e: ureq::Error) -> RequestError {
        match e {
            ureq::Error::Timeout(_) => RequestError::Timeout(self.timeout_s),
            ureq::Error::Io(io) => io_error(io, self.timeout_s),
            ureq::Error::Json(j) => RequestError::Malformed(j.to_string()),
            ureq::Error::BodyExceedsLimit(n) => {
                RequestError::Malformed(format!("body larger than {n} bytes"))
            }
            other => RequestError::Unreachable(other.to_string()),
        }
    }

    /// Check the status; a non-2xx becomes a `Status` error with the server's message.
    fn check(
        &self,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> Result<ureq::http::Response<ureq::Body>, RequestError> {
        let code = resp.status().as_u16();
        if (200..300).contains(&code) {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(Duration::from_secs_f64);
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        // OpenAI-style `{"error": {"message": ...}}` when there is one.
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .or_else(|| v.pointer("/message"))
                    .and_then(|m| m.as_str().map(str::to_string))
            })
            .unwrap_or_else(|| body.chars().take(300).collect());
        Err(RequestError::Status {
            code,
            message,
            retry_after,
        })
    }

    fn read_json<T: DeserializeOwned>(
        &self,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> Result<T, RequestError> {
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_vec()
            .map_err(|e| self.map_err(e))?;
        serde_json::from_slice(&bytes).map_err(|e| RequestError::Malformed(e.to_string()))
    }

    /// One GET, no retries (start-up probes decide themselves).
    pub fn get_once<T: DeserializeOwned>(&self, path: &str) -> Result<T, RequestError> {
        let mut r = self.agent.get(format!("{}{path}", self.url));
        if let Some(a) = &self.auth {
            r = r.header("Authorization", a);
        }
        let resp = r.call().map_err(|e| self.map_err(e))?;
        self.read_json(self.check(resp)?)
    }

    /// A GET with the retry policy.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, RequestError> {
        self.with_retries(None, || self.get_once(path))
    }

    /// A POST of JSON with the retry policy; `tokens` feeds the rate limit.
    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        tokens: usize,
        cancel: Option<&AtomicBool>,
    ) -> Result<T, RequestError> {
        self.with_retries(cancel, || {
            self.admit(tokens, cancel)?;
            let resp = self.send(path, body)?;
            self.read_json(self.check(resp)?)
        })
    }

    /// Open a server-sent-events stream (no retries: the caller knows what
    /// was already received, so it decides what to resend).
    pub fn post_stream(
        &self,
        path: &str,
        body: &impl Serialize,
        tokens: usize,
        cancel: Option<&AtomicBool>,
    ) -> Result<SseReader, RequestError> {
        self.admit(tokens, cancel)?;
        let resp = self.send(path, body)?;
        let resp = self.check(resp)?;
        Ok(SseReader {
            inner: BufReader::new(Box::new(resp.into_body().into_reader())),
            timeout_s: self.timeout_s,
            line: String::new(),
        })
    }
}

fn io_error(io: std::io::Error, timeout_s: f64) -> RequestError {
    match io.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            RequestError::Timeout(timeout_s)
        }
        _ => {
            // ureq wraps its own timeouts in io errors while reading a body.
            let msg = io.to_string();
            if msg.contains("timeout") || msg.contains("timed out") {
                RequestError::Timeout(timeout_s)
            } else {
                RequestError::Unreachable(msg)
            }
        }
    }
}

fn sleep_unless_cancelled(d: Duration, cancel: Option<&AtomicBool>) -> Result<(), RequestError> {
    let end = Instant::now() + d;
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(RequestError::Cancelled);
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(CANCEL_POLL));
    }
}

/// The `data:` payloads of a server-sent-events body, one JSON text each.
pub struct SseReader {
    inner: BufReader<Box<dyn Read + Send>>,
    timeout_s: f64,
    line: String,
}

impl SseReader {
    /// The next event's data, `None` at `[DONE]` or the end of the body.
    pub fn next_data(&mut self) -> Result<Option<String>, RequestError> {
        loop {
            self.line.clear();
            let n = self
                .inner
                .read_line(&mut self.line)
                .map_err(|e| io_error(e, self.timeout_s))?;
            if n == 0 {
                return Ok(None);
            }
            let l = self.line.trim_end_matches(['\r', '\n']);
            if let Some(d) = l.strip_prefix("data:") {
                let d = d.trim_start();
                if d == "[DONE]" {
                    return Ok(None);
                }
                return Ok(Some(d.to_string()));
            }
            // llama-server reports a failure inside a stream as `error: {...}`.
            if let Some(d) = l.strip_prefix("error:") {
                return Err(RequestError::Malformed(format!(
                    "the server aborted the stream: {}",
                    d.trim()
                )));
            }
            // Blank separators, comments (`: ping`), `event:` / `id:` lines.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked_and_normalized() {
        assert_eq!(
            parse_base_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            parse_base_url("https://api.example.org/v1").unwrap(),
            "https://api.example.org"
        );
        assert!(parse_base_url("127.0.0.1:8080")
            .unwrap_err()
            .contains("http://"));
        assert!(parse_base_url("http://:8080").unwrap_err().contains("host"));
        assert!(parse_base_url("http://host:80x0")
            .unwrap_err()
            .contains("port"));
    }

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        let cfg = HttpConfig {
            backoff_ms: 100,
            backoff_max_ms: 1000,
            ..Default::default()
        };
        let e = Endpoint::new("http://127.0.0.1:1", &cfg).unwrap();
        for attempt in 0..8 {
            let bound = (100u64 << attempt).min(1000) as f64 / 1000.0;
            for _ in 0..20 {
                let d = e.backoff(attempt, None).as_secs_f64();
                assert!(
                    d >= bound * 0.5 - 1e-9 && d <= bound + 1e-9,
                    "{attempt}: {d}"
                );
            }
        }
        assert!(e.backoff(0, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }

    #[test]
    fn transient_errors_are_the_retryable_ones() {
        let st = |code| RequestError::Status {
            code,
            message: String::new(),
            retry_after: None,
        };
        assert!(st(500).transient() && st(503).transient() && st(429).transient());
        assert!(!st(400).transient() && !st(404).transient() && !st(401).transient());
        assert!(RequestError::Timeout(1.0).transient());
        assert!(!RequestError::Cancelled.transient());
    }

    #[test]
    fn bucket_admits_the_burst_then_paces() {
        let mut b = Bucket::new(10.0, 2.0);
        assert_eq!(b.take(1.0), Duration::ZERO);
        assert_eq!(b.take(1.0), Duration::ZERO);
        let w = b.take(1.0).as_secs_f64();
        assert!(w > 0.05 && w <= 0.1 + 1e-6, "{w}");
    }

    #[test]
    fn sse_lines_yield_data_payloads() {
        let body = ": ping\n\ndata: {\"a\":1}\n\nevent: x\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\n\n";
        let mut r = SseReader {
            inner: BufReader::new(Box::new(std::io::Cursor::new(body.as_bytes().to_vec()))),
            timeout_s: 1.0,
            line: String::new(),
        };
        assert_eq!(r.next_data().unwrap().as_deref(), Some("{\"a\":1}"));
        assert_eq!(r.next_data().unwrap().as_deref(), Some("{\"b\":2}"));
        assert_eq!(r.next_data().unwrap(), None);
    }
}

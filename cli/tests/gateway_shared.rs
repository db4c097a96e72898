//! Gateways past one process, end to end: two `novastack serve --config` processes
//! sharing state through a real `redis-server` on 127.0.0.1 (a key's RPM holds across
//! both, a cooldown set by one is honoured by the other, both keep serving when Redis
//! dies and share again when it is back), and a replica pool of real `novastack serve`
//! engines where one replica is killed mid-run.
//!
//! `redis-server` comes from the system (CI installs it); without it the Redis test is
//! skipped, unless `NOVASTACK_REQUIRE_REDIS=1` makes that a failure.

mod common;

use common::process::{fixture, post_json, request, Server};
use novastack_tests::mock_upstream::{Behavior as B, MockUpstream};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on 127.0.0.1, persistence off, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts one on `port` (a free one when `None`); `None` when there is no
    /// redis-server binary and none is required.
    fn start(port: Option<u16>) -> Option<Redis> {
        let port = port.unwrap_or_else(free_port);
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("NOVASTACK_REQUIRE_REDIS").is_err(),
                    "redis-server is required (NOVASTACK_REQUIRE_REDIS) but cannot start: {e}"
                );
                eprintln!("skipped: no redis-server ({e})");
                return None;
            }
        };
        let r = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(r)
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("novastack-gw-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("gateway.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

fn chat(model: &str, text: &str, stream: bool) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}],
                       "max_tokens": 4, "stream": stream})
    .to_string()
}

fn post(addr: SocketAddr, body: &str, key: Option<&str>) -> common::process::Answer {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    request(
        addr,
        "POST",
        "/v1/chat/completions",
        &headers,
        body.as_bytes(),
    )
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_gateways_share_limits_and_cooldowns_through_redis_and_survive_its_death() {
    let Some(redis) = Redis::start(None) else {
        return;
    };
    let up = MockUpstream::start(B::Stream(vec!["hi"]));
    let flaky = MockUpstream::start(B::Status(500, None));
    let config = format!(
        r#"state: {{redis_url: "{redis}", key_prefix: "t{pid}", timeout_ms: 300}}
models:
  - {{name: ok, provider: openai, base_url: "{up}", auth: none, timeout_s: 5}}
  - {{name: flaky, provider: openai, base_url: "{flaky}", auth: none, timeout_s: 5}}
retry: {{max_attempts: 1}}
cooldown: {{failures: 2, window_s: 60, cooldown_s: 60}}
api_keys:
  - {{name: team, key_env: TEAM_KEY, rpm: 5}}
  - {{name: free, key_env: FREE_KEY}}
"#,
        redis = redis.url(),
        pid = std::process::id(),
        up = up.url(),
        flaky = flaky.url()
    );
    let path = write_config("shared", &config);
    let env = [("TEAM_KEY", "team-secret"), ("FREE_KEY", "free-secret")];
    let a = Server::gateway(&path, &env);
    let b = Server::gateway(&path, &env);
    wait_for("both gateways see Redis", Duration::from_secs(10), || {
        a.metric("novastack_gateway_state_redis_up") == 1.0
            && b.metric("novastack_gateway_state_redis_up") == 1.0
    });

    // A key limited to 5 requests a minute gets 5 in total across both replicas.
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..12 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = post(gw.addr, &chat("ok", "hello", false), Some("team-secret"));
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert!(r.header("retry-after").is_some(), "{}", r.body_text());
                assert_eq!(r.header("x-ratelimit-limit-requests"), Some("5"));
                assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
            }
            s => panic!("status {s}: {}", r.body_text()),
        }
    }
    assert_eq!((ok, limited), (5, 7), "a 5 RPM key across two gateways");

    // Two failures through gateway A cool `flaky` down; gateway B honours it without
    // sending the upstream anything.
    for _ in 0..2 {
        let r = post(a.addr, &chat("flaky", "x", false), Some("free-secret"));
        assert_eq!(r.status, 502, "{}", r.body_text());
    }
    let sent = flaky.count();
    let r = post(b.addr, &chat("flaky", "x", false), Some("free-secret"));
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert!(r.body_text().contains("cooling down"), "{}", r.body_text());
    assert_eq!(
        flaky.count(),
        sent,
        "gateway B sent nothing to a model A cooled down"
    );

    // Redis dies: both keep serving on their own state, count it, and log it once.
    let port = redis.port;
    drop(redis);
    for gw in [&a, &b] {
        for _ in 0..3 {
            let r = post(
                gw.addr,
                &chat("ok", "still there?", true),
                Some("free-secret"),
            );
            assert_eq!(r.status, 200, "{}", r.body_text());
            assert!(r.body_text().contains("[DONE]"));
        }
        assert_eq!(gw.metric("novastack_gateway_state_redis_up"), 0.0);
        assert!(gw.metric("novastack_gateway_state_errors_total") >= 1.0);
        assert!(gw.metric("novastack_gateway_state_local_decisions_total") >= 1.0);
        let log = gw.log_text();
        assert_eq!(
            log.matches("is unreachable").count(),
            1,
            "logged once:\n{log}"
        );
    }
    // Redis returns (empty, as a restarted cache would): both go back to it.
    let redis = Redis::start(Some(port)).expect("redis-server restarts");
    wait_for(
        "both gateways back on Redis",
        Duration::from_secs(10),
        || {
            a.metric("novastack_gateway_state_redis_up") == 1.0
                && b.metric("novastack_gateway_state_redis_up") == 1.0
        },
    );
    for gw in [&a, &b] {
        let r = post(gw.addr, &chat("ok", "back", false), Some("free-secret"));
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert!(gw.log_text().contains("is reachable"));
    }
    drop(redis);
}

#[test]
fn fail_closed_refuses_while_redis_is_unreachable() {
    // Nothing listens on this port: Redis is down from the start.
    let port = free_port();
    let up = MockUpstream::start(B::Stream(vec!["hi"]));
    let config = format!(
        "state: {{redis_url: \"redis://127.0.0.1:{port}\", on_error: closed, timeout_ms: 100}}\nmodels:\n  - {{name: ok, provider: openai, base_url: \"{}\", auth: none}}\n",
        up.url()
    );
    let gw = Server::gateway(&write_config("closed", &config), &[]);
    let r = post(gw.addr, &chat("ok", "hello", false), None);
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert!(r.body_text().contains("Redis"), "{}", r.body_text());
    assert_eq!(up.count(), 0);
    assert!(gw.metric("novastack_gateway_state_refused_total") >= 1.0);
}

#[test]
fn a_replica_killed_mid_run_costs_no_request_that_had_not_started() {
    let model = fixture("llama-f32");
    let engines: Vec<Server> = (0..3).map(|_| Server::start(&model, &[])).collect();
    let urls: Vec<String> = engines
        .iter()
        .map(|e| format!("\"http://{}/v1\"", e.addr))
        .collect();
    let config = format!(
        "models:\n  - {{name: m, provider: openai, replicas: [{}], balance: round_robin, auth: none, timeout_s: 30, health_check: {{interval_s: 0.5, timeout_s: 1, failures: 1, path: /ready}}}}\nretry: {{max_attempts: 3, initial_backoff_ms: 10, max_backoff_ms: 50}}\n",
        urls.join(", ")
    );
    let gw = Server::gateway(&write_config("pool", &config), &[]);
    let mut engines = engines;
    // Every replica serves, and says so.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..6 {
        let r = post(gw.addr, &chat("m", &format!("warm up {i}"), false), None);
        assert_eq!(r.status, 200, "{}", r.body_text());
        seen.insert(r.header("x-novastack-replica").unwrap().to_string());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // Six clients send requests back to back, before, while and after replica 1 is
    // killed.
    let addr = gw.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let stream = (c + i) % 2 == 0;
                    let body = serde_json::json!({"model": "m", "max_tokens": 24, "stream": stream,
                        "messages": [{"role": "user", "content": format!("client {c} request {i}")}]});
                    let r = post(addr, &body.to_string(), None);
                    out.push((stream, Instant::now(), r));
                    i += 1;
                }
                out
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let victim = engines.remove(1);
    let victim_url = format!("http://{}/v1", victim.addr);
    drop(victim); // SIGKILL, mid-run
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut failed = Vec::new();
    let (mut before, mut after, mut broke_mid_stream) = (0, 0, 0);
    for c in clients {
        for (stream, done, r) in c.join().unwrap() {
            let text = r.body_text();
            if done < killed_at {
                before += 1;
            } else {
                after += 1;
            }
            if r.status != 200 {
                failed.push(format!("status {}: {text}", r.status));
            } else if stream && text.contains("upstream_stream_error") {
                // Allowed only once content had reached the client.
                assert!(
                    text.contains("\"content\""),
                    "an error before any byte: {text}"
                );
                broke_mid_stream += 1;
            }
        }
    }
    assert!(
        before >= 6 && after >= 6,
        "requests before the kill {before}, after {after}"
    );
    assert!(
        broke_mid_stream <= 6,
        "at most the streams in flight on the victim"
    );
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    wait_for(
        "the dead replica is ejected",
        Duration::from_secs(5),
        || {
            gw.metric(&format!(
                "novastack_gateway_replica_healthy{{model=\"m\",replica=\"{victim_url}\"}}"
            )) == 0.0
        },
    );
    // Afterwards every request goes to the two that are left.
    for i in 0..4 {
        let r = post_json(
            gw.addr,
            "/v1/chat/completions",
            &chat("m", &format!("after {i}"), false),
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_ne!(r.header("x-novastack-replica"), Some(victim_url.as_str()));
    }
}

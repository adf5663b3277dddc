//! Interop with Mosquitto, an independent broker, and its `mosquitto_pub` client: plain
//! and JSON readings, TLS with client certificates made in the test, a broker restart in
//! the middle of a QoS 1 stream, and Sparkplug B encoded by an independent encoder.
//! Under `CI=true` a missing Mosquitto fails these tests.

use crate::support::{
    command_ok, free_port, make_certs, mosquitto_available, repo, wait_for_port, Peer,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use wattchdog::model::Reading;
use wattchdog::source::mqtt::{subscribe, MqttStats};
use wattchdog::time::Clock;
use wattchdog::Config;

/// A Mosquitto instance on a loopback port with its own config (and persistence in
/// `dir`); `tls` adds certificate settings to the listener.
struct Mosquitto {
    peer: Peer,
    port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    fn start(dir: &Path, port: u16, tls: &str) -> Self {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n{tls}",
                dir.display()
            ),
        )
        .unwrap();
        Self::run(conf, port)
    }

    fn run(conf: PathBuf, port: u16) -> Self {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, Duration::from_secs(10));
        Self {
            peer: Peer(child),
            port,
            conf,
        }
    }

    /// Stops it the way an operator does (SIGTERM: it saves its persistence file).
    fn stop(mut self) -> (PathBuf, u16) {
        let pid = self.peer.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.peer.0.wait().unwrap();
        (self.conf.clone(), self.port)
    }
}

/// Publishes with mosquitto_pub (QoS 1); `args` are the message options.
fn mosquitto_pub(port: u16, args: &[&str]) {
    command_ok(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(args),
    );
}

/// A subscriber started from a config text, collecting readings.
struct Subscriber {
    rx: mpsc::Receiver<Vec<Reading>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<MqttStats>,
}

impl Subscriber {
    fn start(text: &str, base: &Path) -> Self {
        let cfg = Config::from_toml_str(text, "t").unwrap();
        let plan = cfg.mqtt.resolve(base, "t").unwrap().remove(0);
        let (tx, rx) = mpsc::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(MqttStats::default());
        let task = tokio::spawn(subscribe(plan, Clock::wall(), stats.clone(), tx, stop_rx));
        Self {
            rx,
            stop,
            task,
            stats,
        }
    }

    /// Readings until `n` have arrived or `within` passed.
    async fn take(&mut self, n: usize, within: Duration) -> Vec<Reading> {
        let deadline = tokio::time::Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(batch)) => got.extend(batch),
                _ => break,
            }
        }
        got
    }

    async fn stop(self) -> Arc<MqttStats> {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
        self.stats
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_readings_arrive_decoded() {
    if !mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), free_port(), "");
    let port = broker.port;
    let mut sub = Subscriber::start(
        &format!("[[mqtt.brokers]]\nurl = \"mqtt://127.0.0.1:{port}\"\nmap = \"generic-json-gateway\"\nclient_id = \"it-plain\"\n"),
        dir.path(),
    );
    settle().await;
    mosquitto_pub(
        port,
        &[
            "-t",
            "gateway/fra2/chiller/chiller-7/data",
            "-m",
            r#"{"time": 1783382400123, "data": {"supply_temp_c": 6.95, "flow_lps": 41.2, "running": true}}"#,
        ],
    );
    mosquitto_pub(
        port,
        &[
            "-t",
            "gateway/fra2/chiller/chiller-7/data",
            "-m",
            "not json",
        ],
    );
    mosquitto_pub(port, &["-t", "somewhere/else", "-m", "1"]);
    mosquitto_pub(
        port,
        &[
            "-t",
            "gateway/fra2/chiller/chiller-7/status",
            "-m",
            "offline",
        ],
    );
    let got = sub.take(4, Duration::from_secs(10)).await;
    let stats = sub.stop().await;
    let v = |m: &str| got.iter().find(|r| &*r.metric == m).map(|r| r.value);
    assert_eq!(v("supply_temp_c"), Some(6.95));
    assert_eq!(v("flow_lps"), Some(41.2));
    assert_eq!(v("running"), Some(1.0));
    assert_eq!(v("online"), Some(0.0));
    let r = &got[0];
    assert_eq!(
        (r.site.as_ref(), r.kind.as_ref(), r.device.as_ref(), r.ts),
        ("fra2", "chiller", "chiller-7", 1_783_382_400_123)
    );
    assert_eq!(
        stats.malformed.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Only the map's filters are subscribed: other topics never arrive.
    assert_eq!(stats.unmapped.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_and_refused_without_one() {
    if !mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let d = dir.path().display();
    let tls = format!(
        "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n"
    );
    let broker = Mosquitto::start(dir.path(), free_port(), &tls);
    let port = broker.port;
    let base = format!(
        "[[mqtt.brokers]]\nurl = \"mqtts://127.0.0.1:{port}\"\nmap = \"generic-json-gateway\"\nca_file = \"ca.pem\"\nbackoff_min = \"100ms\"\n"
    );
    let mut with = Subscriber::start(
        &format!(
            "{base}client_id = \"it-tls\"\ncert_file = \"client.pem\"\nkey_file = \"client.key\"\n"
        ),
        dir.path(),
    );
    let without = Subscriber::start(
        &format!("{base}client_id = \"it-tls-nocert\"\n"),
        dir.path(),
    );
    settle().await;
    let (ca, cert, key) = (
        format!("{d}/ca.pem"),
        format!("{d}/client.pem"),
        format!("{d}/client.key"),
    );
    mosquitto_pub(
        port,
        &[
            "--cafile",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "-t",
            "gateway/ams1/ups/ups-3/data",
            "-m",
            r#"{"time": 1783382400, "data": {"load_pct": 47.5}}"#,
        ],
    );
    let got = with.take(1, Duration::from_secs(10)).await;
    assert_eq!(
        got.first().map(|r| r.value),
        Some(47.5),
        "TLS subscriber got the reading"
    );
    let stats = with.stop().await;
    assert_eq!(stats.connects.load(std::sync::atomic::Ordering::Relaxed), 1);
    let refused = without.stop().await;
    assert_eq!(
        refused.connects.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(refused.errors.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing_and_duplicates_nothing() {
    if !mosquitto_available() {
        return;
    }
    const N: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    // Mosquitto started as root drops to its own user: let it write its database here.
    let _ = Command::new("chmod").arg("777").arg(dir.path()).status();
    let broker = Mosquitto::start(dir.path(), free_port(), "");
    let port = broker.port;
    // Live event time: each half stamped when it is published, 1 ms apart.
    let lines = move |range: std::ops::Range<usize>| -> String {
        let t0 = chrono::Utc::now().timestamp_millis();
        range
            .enumerate()
            .map(|(k, i)| {
                format!(
                    "{{\"time\": {}, \"data\": {{\"flow_lps\": {}.5}}}}\n",
                    t0 + k as i64,
                    i
                )
            })
            .collect()
    };
    let publish = |text: String| {
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-l"])
            .args(["-t", "gateway/ams1/chiller/chiller-1/data"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    };
    // A generous reorder tolerance: the second half is delivered seconds after it was
    // stamped (the subscriber is backing off), however slow the machine. The wait is
    // learned in the first second from the first half, delivered at once, so by the
    // restart it is far shorter than that: what the broker kept for the session must
    // still be waited for.
    let text = format!(
        "[pipeline]\nreorder_tolerance = \"60s\"\nreorder_learning = \"1s\"\n[[mqtt.brokers]]\nurl = \"mqtt://127.0.0.1:{port}\"\nmap = \"generic-json-gateway\"\nclient_id = \"it-restart\"\nbackoff_min = \"1500ms\"\nbackoff_max = \"3s\"\n"
    );
    let cfg = Config::from_toml_str(&text, "t").unwrap();
    // The whole pipeline, so "exactly once" is counted where it matters.
    let script = async move {
        settle().await;
        publish(lines(0..N / 2));
        settle().await;
        let (conf, port) = broker.stop();
        // Published while the subscriber is still backing off: the broker keeps them
        // for its persistent session.
        let broker = Mosquitto::run(conf, port);
        publish(lines(N / 2..N));
        tokio::time::sleep(Duration::from_secs(6)).await;
        broker
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stop = async move {
        let broker = script.await;
        let _ = tx.send(broker);
    };
    let report =
        wattchdog::app::run::live(&cfg, dir.path(), "t", &mut wattchdog::sink::discard(), stop)
            .await
            .unwrap();
    drop(rx);
    let m = &report.mqtt[0];
    assert!(m.connects >= 2, "reconnected after the restart: {m:?}");
    assert!(m.errors >= 1, "{m:?}");
    assert_eq!(
        report.pipeline.readings, N as u64,
        "every reading once: {m:?}, pipeline {:?}",
        report.pipeline
    );
    let wait = report
        .pipeline
        .reorder_wait_ms
        .expect("the wait was learned");
    assert!(
        wait < 60_000,
        "learned, shorter than the tolerance: {wait} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_from_an_independent_encoder() {
    if !mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("python3")
        .arg(repo("tests/interop/sparkplug_encode.py"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let broker = Mosquitto::start(dir.path(), free_port(), "");
    let port = broker.port;
    let mut sub = Subscriber::start(
        &format!("[[mqtt.brokers]]\nurl = \"mqtt://127.0.0.1:{port}\"\nmap = \"wattchdog-sim-sparkplug\"\nclient_id = \"it-spb\"\n"),
        dir.path(),
    );
    settle().await;
    let topics = std::fs::read_to_string(dir.path().join("topics.txt")).unwrap();
    for line in topics.lines() {
        let (file, topic) = line.split_once(' ').unwrap();
        let file = dir.path().join(file);
        mosquitto_pub(port, &["-t", topic, "-f", file.to_str().unwrap()]);
    }
    let got = sub.take(13, Duration::from_secs(10)).await;
    let stats = sub.stop().await;
    let seen: Vec<(String, String, f64, i64)> = got
        .iter()
        .map(|r| {
            (
                r.device.to_string(),
                r.metric.to_string(),
                r.value,
                r.ts - 1_783_382_400_000,
            )
        })
        .collect();
    let has = |d: &str, m: &str, v: f64, dt: i64| {
        assert!(
            seen.contains(&(d.to_owned(), m.to_owned(), v, dt)),
            "{d} {m} = {v} at +{dt} ms missing from {seen:#?}"
        )
    };
    has("edge1", "online", 1.0, 0);
    has("ups-9", "online", 1.0, 0);
    has("ups-9", "input_voltage_v", 231.5, 0);
    has("ups-9", "battery_temp_c", -7.0, 0);
    has("ups-9", "on_battery", 0.0, 0);
    has("ups-9", "output_power_kw", 412.25, 0);
    has("ups-9", "energy_wh", -5e9, 0);
    has("ups-9", "input_voltage_v", 229.0, 1000);
    has("ups-9", "battery_temp_c", -8.0, 1000);
    has("ups-9", "on_battery", 1.0, 1500);
    has("ups-9", "output_power_kw", 399.5, 2000);
    has("ups-9", "online", 0.0, 3000);
    assert!(got
        .iter()
        .filter(|r| &*r.device == "ups-9")
        .all(|r| &*r.kind == "ups"));
    let gaps = stats.seq_gaps.load(std::sync::atomic::Ordering::Relaxed);
    let rebirths = stats.rebirths.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        (gaps, rebirths),
        (1, 1),
        "seq 2 → 7 is a gap: one rebirth asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_message_too_big_to_read_is_skipped_not_redelivered_forever() {
    if !mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), free_port(), "");
    let port = broker.port;
    let config = format!(
        "[[mqtt.brokers]]\nurl = \"mqtt://127.0.0.1:{port}\"\nmap = \"generic-json-gateway\"\nclient_id = \"it-poison\"\n\
         max_packet_bytes = 4096\nbackoff_min = \"10ms\"\nbackoff_max = \"100ms\"\n"
    );
    // The persistent session and its subscription exist (a probe came through); then the
    // subscriber is away.
    let topic = "gateway/fra2/chiller/chiller-7/data";
    let probe = r#"{"time": 1783382399000, "data": {"flow_lps": 40}}"#;
    let mut sub = Subscriber::start(&config, dir.path());
    while sub.take(1, Duration::from_millis(500)).await.is_empty() {
        mosquitto_pub(port, &["-t", topic, "-m", probe]);
    }
    sub.stop().await;
    // Queued for it: a message it cannot read (QoS 1: redelivered until acknowledged,
    // and nothing queued behind it is delivered before it).
    let big = format!(
        r#"{{"time": 1783382400000, "data": {{"pad": "{}"}}}}"#,
        "x".repeat(10_000)
    );
    mosquitto_pub(port, &["-t", topic, "-m", &big]);
    let mut sub = Subscriber::start(&config, dir.path());
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    // What is published from now on gets through once the subscriber is past it (its
    // new session subscribed): publish until one arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing got past the unreadable message: malformed {}, discarded {}, connects {}",
            count(&sub.stats.malformed),
            count(&sub.stats.sessions_discarded),
            count(&sub.stats.connects)
        );
        mosquitto_pub(
            port,
            &[
                "-t",
                topic,
                "-m",
                r#"{"time": 1783382401000, "data": {"supply_temp_c": 7.1}}"#,
            ],
        );
        got = sub.take(1, Duration::from_millis(500)).await;
        got.retain(|r| &*r.metric != "flow_lps"); // a probe left over from the first part
    }
    let stats = sub.stop().await;
    assert_eq!(
        got.first().map(|r| (r.metric.as_ref(), r.value)),
        Some(("supply_temp_c", 7.1))
    );
    assert_eq!(count(&stats.malformed), 3, "read three times, then skipped");
    assert_eq!(count(&stats.sessions_discarded), 1);
}

//! Shared helpers: run the binary, make captures with the project's simulator.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use wattchdog::sim::{self, Label, SimOptions};

/// The binary under test.
pub fn wattchdog() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wattchdog"));
    c.env_remove("RUST_LOG");
    c
}

/// Runs the binary and returns its output.
pub fn run(args: &[&str]) -> Output {
    wattchdog().args(args).output().expect("binary runs")
}

/// Runs the binary and insists it succeeded (its stderr is the failure message).
pub fn run_ok(args: &[&str]) -> Output {
    command_ok(wattchdog().args(args))
}

/// Runs any command and insists it succeeded (its stderr is the failure message).
pub fn command_ok(c: &mut Command) -> Output {
    let out = c.output().expect("command runs");
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Path of a checked-in file relative to the crate root.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Writes a simulated capture (plain JSONL) and its labels sidecar; returns the labels.
pub fn simulate(path: &Path, hours: f64, seed: u64, attacks: &str) -> Vec<Label> {
    simulate_variant(path, "default", hours, seed, attacks)
}

/// [`simulate`] of a built-in facility variant.
pub fn simulate_variant(
    path: &Path,
    variant: &str,
    hours: f64,
    seed: u64,
    attacks: &str,
) -> Vec<Label> {
    let opts = SimOptions {
        start: 1_783_382_400_000,
        hours,
        seed,
        attacks: sim::parse_attacks(attacks).unwrap(),
        intensity: sim::Intensity::Obvious,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let facility = sim::Facility::variant(variant).unwrap();
    let labels = sim::simulate(&facility, &opts, &mut f).unwrap();
    std::io::Write::flush(&mut f).unwrap();
    std::fs::write(
        sim::labels_path(path),
        serde_json::to_string(&labels).unwrap(),
    )
    .unwrap();
    labels
}

/// The alerts a replay of `capture` (with `config`, if any) opened.
pub fn replay_opened(capture: &str, config: Option<&str>) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let mut args = vec!["replay", "--no-progress", "--json", "--alerts"];
    args.push(out.to_str().unwrap());
    if let Some(c) = config {
        args.extend(["-c", c]);
    }
    args.push(capture);
    run_ok(&args);
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|a| a["status"] == "open")
        .collect()
}

/// (opened at, detector) of the alerts a replay of `capture` opened.
pub fn opened_by(capture: &str, config: Option<&str>) -> Vec<(String, String)> {
    opened_fields(capture, config, ["ts", "detector"])
}

/// Two text fields of each alert a replay of `capture` opened.
pub fn opened_fields(
    capture: &str,
    config: Option<&str>,
    [first, second]: [&str; 2],
) -> Vec<(String, String)> {
    replay_opened(capture, config)
        .iter()
        .map(|a| {
            let text = |k: &str| a[k].as_str().unwrap().to_string();
            (text(first), text(second))
        })
        .collect()
}

/// Alert JSONL lines with the one wall-clock field removed, for comparisons.
pub fn alerts_without_wall_clock(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("detected_at");
            v
        })
        .collect()
}

/// A child process killed when dropped (peers and servers started by tests).
pub struct Peer(pub std::process::Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether an interop peer is usable. Under `CI=true` a missing peer fails the test
/// (CI installs it); elsewhere the test says why it is skipped and passes.
pub fn peer_available(what: &str, probe: &mut Command) -> bool {
    let ok = probe
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} is missing under CI=true: .ci/run must install it"
        );
        eprintln!("skipping: {what} is not installed (CI installs it)");
    }
    ok
}

/// pymodbus for Python 3, the independent Modbus implementation of the interop tests.
pub fn pymodbus_available() -> bool {
    peer_available(
        "pymodbus (pip install pymodbus)",
        Command::new("python3").args(["-c", "import pymodbus"]),
    )
}

/// A free loopback UDP port (free when asked; the peer binds it right after).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free loopback port (free when asked; the peer binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on the loopback `port`.
pub fn wait_for_port(port: u16, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on port {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits for a file to appear (written whole by its producer).
pub fn wait_for_file(path: &Path, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Readings of a JSONL capture as `(ts, device, metric, value)`.
pub fn capture_readings(text: &str) -> Vec<(i64, String, String, f64)> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("metric").is_some())
        .map(|v| {
            let ts = wattchdog::time::TimeFormat::Auto
                .parse(v["ts"].as_str().unwrap())
                .unwrap();
            (
                ts,
                v["device"].as_str().unwrap().to_owned(),
                v["metric"].as_str().unwrap().to_owned(),
                v["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Mosquitto and its clients, the independent MQTT broker of the interop tests.
pub fn mosquitto_available() -> bool {
    peer_available(
        "mosquitto and mosquitto-clients (apt-get install mosquitto mosquitto-clients)",
        Command::new("sh").args(["-c", "command -v mosquitto && command -v mosquitto_pub"]),
    )
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
pub fn make_certs(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wattchdog test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write("ca.pem", ca.pem());
    for (name, sans) in [
        (
            "server",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        ),
        ("client", vec!["wattchdog".to_owned()]),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).unwrap();
        write(&format!("{name}.pem"), cert.pem());
        write(&format!("{name}.key"), key.serialize_pem());
    }
}

/// scikit-learn and numpy, the reference isolation forest.
pub fn sklearn_available() -> bool {
    peer_available(
        "scikit-learn (pip install scikit-learn)",
        Command::new("python3").args(["-c", "import sklearn, numpy"]),
    )
}

/// A `Write` a test can read while a server writes to it.
#[derive(Clone, Default)]
pub struct SharedBuf(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The simulated facility served over Modbus TCP on a free loopback port, in real time:
/// the server (killed when dropped), the capture of what it served, and the `run` config
/// that names its devices (written once the port is bound).
pub fn serve_facility(dir: &Path) -> (Peer, PathBuf, PathBuf) {
    let served = dir.join("served.jsonl");
    let run_toml = dir.join("run.toml");
    let server = Peer(
        wattchdog()
            .args(["simulate", "--serve-modbus", "127.0.0.1:0", "--hours", "1"])
            .args(["--attacks", "none", "-o"])
            .arg(&served)
            .arg("--write-config")
            .arg(&run_toml)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_file(&run_toml, std::time::Duration::from_secs(20));
    (server, served, run_toml)
}

/// Taken by the tests that judge timing on an accelerated clock and by the tests that
/// load the machine hardest, so that one never runs beside the other: on two cores a busy
/// neighbour (a browser, a benchmark replay) can stall a poller for a second, which at
/// 300× is five minutes of silence.
pub fn machine_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Opens `url` in headless Chromium (driven over the DevTools protocol by
/// `tests/browser.py`) and evaluates each script in the page in turn; their values, or
/// `None` when Chromium is not installed (outside CI).
pub fn in_browser(url: &str, scripts: &[String]) -> Option<Vec<serde_json::Value>> {
    if !peer_available(
        "chromium (apt-get install chromium)",
        Command::new("sh").args(["-c", "command -v chromium"]),
    ) {
        return None;
    }
    let out = Command::new("python3")
        .arg(repo("tests/browser.py"))
        .arg(url)
        .args(scripts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the browser: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

/// A page script that waits (up to 30 s) until `probe`, a JavaScript expression, is
/// truthy, then evaluates `then` with its value bound to `found`.
pub fn when_page_has(probe: &str, then: &str) -> String {
    format!(
        "(async () => {{ for (let i = 0; i < 300; i++) {{ const found = {probe}; \
         if (found) {{ return {then}; }} await new Promise((r) => setTimeout(r, 100)); }} \
         throw new Error('not in the page after 30 s: ' + {probe:?}); }})()"
    )
}

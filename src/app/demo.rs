//! `wattchdog demo`: the whole system on one machine with nothing installed.
//!
//! The simulated facility runs on an accelerated clock twice, from the same seed — so
//! the two copies are the same plant — once served over Modbus TCP and once published
//! as JSON to the embedded MQTT broker; the first copy's UPS units also answer SNMP
//! and send traps, its chillers answer BACnet/IP. `run`'s collectors read each device
//! kind from the transport the demo assigns it (`--mqtt-kinds`, `--snmp-kinds`,
//! `--bacnet-kinds`), the full pipeline detects, and
//! the store, API, dashboard and stream serve the result. Attacks are scheduled every
//! 40 simulated minutes after a 150-minute warm-up (at 100×: the first within two
//! minutes of the start, then every 24 s).

use crate::app::cli::DemoArgs;
use crate::app::{runtime, stop_signal, Summary};
use crate::config::Config;
use crate::correlate::Output;
use crate::sim::{self, Facility, Intensity, SimOptions, Simulator};
use crate::sink::Sink;
use crate::time::{format_ts, Clock};
use anyhow::Context;
use rand::Rng;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tracing::info;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated seconds per wall second.
    pub speed: f64,
    /// Dashboard address.
    pub listen: String,
    /// Device kinds collected over MQTT (the rest over Modbus or SNMP).
    pub mqtt_kinds: Vec<String>,
    /// Device kinds read over SNMP, with traps.
    pub snmp_kinds: Vec<String>,
    /// Device kinds read over BACnet/IP.
    pub bacnet_kinds: Vec<String>,
    /// Facility variant.
    pub variant: String,
    /// Seed.
    pub seed: u64,
    /// Attack intensity.
    pub intensity: Intensity,
    /// Where the store and configs go.
    pub dir: PathBuf,
}

/// Why the demo stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The simulation.
    #[error(transparent)]
    Sim(#[from] sim::SimError),
    /// The embedded broker.
    #[error(transparent)]
    Broker(#[from] crate::app::broker::BrokerError),
    /// The configuration the demo wrote.
    #[error(transparent)]
    Config(#[from] crate::tomlfile::TomlError),
    /// The live run.
    #[error(transparent)]
    Run(#[from] crate::app::run::RunError),
    /// Files and sockets.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Bad options.
    #[error("{0}")]
    Options(String),
}

/// One scheduled attack: wall-clock start, scenario, devices.
pub type Scheduled = (String, String, String);

/// Runs the demo until `shutdown` resolves; `on_ready` gets the dashboard URL (with the
/// token) and the attack schedule in wall-clock time.
pub async fn serve(
    opts: DemoOptions,
    on_ready: &mut dyn FnMut(&str, &[Scheduled]),
    sink: &mut dyn Sink,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    if !(opts.speed > 0.0 && opts.speed <= 1000.0) {
        return Err(DemoError::Options("--speed must be in (0, 1000]".into()));
    }
    std::fs::create_dir_all(&opts.dir)?;
    let facility = Facility::variant(&opts.variant).map_err(sim::SimError::from)?;
    let start = chrono::Utc::now().timestamp() * 1000;
    let clock = Clock {
        epoch: start,
        speed: opts.speed,
    };
    let sim_opts = SimOptions {
        start,
        hours: 24.0,
        seed: opts.seed,
        attacks: sim::parse_attacks("all")?,
        intensity: opts.intensity,
    };
    let modbus_sim = Simulator::new(facility.clone(), &sim_opts)?;
    let mqtt_sim = Simulator::new(facility.clone(), &sim_opts)?;
    let devices = sim::serve::served_devices(&modbus_sim)?;
    let schedule: Vec<Scheduled> = modbus_sim
        .labels()
        .iter()
        .map(|l| {
            let wall = |ts: i64| format_ts(start + ((ts - start) as f64 / opts.speed) as i64);
            (wall(l.start), l.scenario.clone(), l.devices.join(", "))
        })
        .collect();

    let login = crate::app::broker::Login::random();
    let broker = crate::app::broker::start(0, Some(&login), crate::app::broker::DEMO_LOG_BYTES)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let modbus_addr = listener.local_addr()?;
    let site = facility.site.clone();
    let snmp_kinds: Vec<&str> = opts.snmp_kinds.iter().map(String::as_str).collect();
    let bacnet_kinds: Vec<&str> = opts.bacnet_kinds.iter().map(String::as_str).collect();
    let lists = [
        (
            "--mqtt-kinds",
            opts.mqtt_kinds.iter().map(String::as_str).collect(),
        ),
        ("--snmp-kinds", snmp_kinds.clone()),
        ("--bacnet-kinds", bacnet_kinds.clone()),
    ];
    for (i, (a, one)) in lists.iter().enumerate() {
        for (b, other) in &lists[i + 1..] {
            if let Some(k) = one.iter().find(|k| other.contains(k)) {
                return Err(DemoError::Options(format!("{k} is in both {a} and {b}")));
            }
        }
    }
    let (snmp, snmp_served) = if snmp_kinds.is_empty() {
        (None, sim::serve::SnmpServed::default())
    } else {
        // The collector's trap port, picked free now (the agents must know it).
        let trap_to = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
        let localhost = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let (s, served) =
            sim::serve::bind_snmp_agents(localhost, &snmp_kinds, &devices, Some(trap_to)).await?;
        (Some(s), served)
    };
    let (bacnet, bacnet_served) = if bacnet_kinds.is_empty() {
        (None, sim::serve::BacnetServed::default())
    } else {
        let localhost = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let (b, served) =
            sim::serve::bind_bacnet_devices(localhost, &bacnet_kinds, &devices).await?;
        (Some(b), served)
    };
    let others = sim::serve::Others {
        snmp: snmp_served,
        bacnet: bacnet_served,
    };
    let served = tokio::spawn(sim::serve::serve(
        modbus_sim,
        site.clone(),
        listener,
        clock,
        Box::new(std::io::sink()),
        Default::default(),
        snmp,
        bacnet,
        std::future::pending(),
    ));
    let mut publish_opts =
        sim::publish::PublishOptions::from_url(&format!("mqtt://{broker}"), false)
            .map_err(DemoError::Options)?;
    publish_opts.login = Some((login.username.clone(), login.password.clone()));
    let published = tokio::spawn(sim::publish::publish(
        mqtt_sim,
        site.clone(),
        publish_opts,
        clock,
        Box::new(std::io::sink()),
        std::future::pending(),
    ));

    // The collectors: each kind from the transport it is assigned.
    let mqtt_kinds: BTreeSet<&str> = opts.mqtt_kinds.iter().map(String::as_str).collect();
    let mut topics = String::from(
        "profile = \"demo\"\nsource = \"wattchdog demo: the kinds collected over MQTT\"\n",
    );
    for kind in &mqtt_kinds {
        topics += &format!(
            "\n[[topics]]\ntopic = \"wattchdog/{{site}}/{kind}/{{device}}\"\npayload = \"json\"\nkind = \"{kind}\"\ntimestamp = \"ts\"\nfields_object = \"values\"\n"
        );
    }
    let token: String = (0..24)
        .map(|_| format!("{:02x}", rand::rng().random::<u8>()))
        .collect();
    let mut text = format!(
        "[clock]\nspeed = {}\nepoch = {start}\n\n[store]\npath = \"demo.db\"\n\n[http]\nlisten = \"{}\"\ntoken = \"{token}\"\n\n[modbus]\nsite = \"{site}\"\nmax_gap = 16\n{}",
        opts.speed,
        opts.listen,
        sim::serve::accelerated_tolerances(opts.speed)
    );
    for d in devices
        .iter()
        .filter(|d| !mqtt_kinds.contains(d.kind) && !others.serve(&d.name))
    {
        text += &format!(
            "\n[[modbus.devices]]\nname = \"{}\"\naddress = \"{modbus_addr}\"\nunit = {}\nprofile = \"{}\"\n",
            d.name, d.unit, d.profile
        );
    }
    if !mqtt_kinds.is_empty() {
        write_private(&opts.dir.join("demo-topics.toml"), &topics)?;
        text += &format!(
            "\n[[mqtt.brokers]]\nurl = \"mqtt://{broker}\"\nmap = \"demo-topics.toml\"\nsite = \"{site}\"\nclient_id = \"wattchdog-demo-{}\"\nusername = \"{}\"\npassword = \"{}\"\n",
            std::process::id(),
            login.username,
            login.password
        );
    }
    text += &sim::serve::snmp_section(&site, "1s", &others.snmp);
    text += &sim::serve::bacnet_section(&site, "1s", &others.bacnet);
    let cfg_path = opts.dir.join("demo.toml");
    write_private(&cfg_path, &text)?;
    let origin = cfg_path.display().to_string();
    let cfg = Config::from_toml_str(&text, &origin)?;
    info!(config = %origin, "demo configured");
    // Announced only once the dashboard's port is bound (a busy port fails first).
    let soc = crate::app::run::start_soc(&cfg, &opts.dir, &origin).await?;
    let listening = soc.as_ref().and_then(|s| s.addr);
    let url = format!(
        "http://{}/#token={token}",
        listening.map_or(opts.listen.clone(), |a| a.to_string())
    );
    on_ready(&url, &schedule);
    let result = crate::app::run::live_with(&cfg, &opts.dir, &origin, soc, sink, shutdown).await;
    served.abort();
    published.abort();
    result?;
    Ok(())
}
/// Writes a file only its owner can read (the config holds the dashboard token), never
/// through a link someone planted at `path`: a file already there is removed (a link
/// itself, not what it points to) and the new one created exclusively.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    std::io::Write::write_all(&mut o.open(path)?, text.as_bytes())
}

/// How a demo ended (it prints as it goes; nothing more to say).
#[derive(Debug, Serialize)]
pub struct DemoSummary {
    /// Distinct alerts raised.
    pub alerts: usize,
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
}

impl Summary for DemoSummary {}

/// `wattchdog demo`: prints the dashboard link, the attack schedule and each new alert.
pub fn run(a: DemoArgs) -> anyhow::Result<DemoSummary> {
    let intensity = crate::sim::Intensity::parse(&a.intensity)
        .with_context(|| format!("--intensity {:?}: use subtle or obvious", a.intensity))?;
    let kinds = |list: &str| match list.trim() {
        "none" | "" => Vec::new(),
        list => list.split(',').map(|k| k.trim().to_owned()).collect(),
    };
    let (mqtt_kinds, snmp_kinds) = (kinds(&a.mqtt_kinds), kinds(&a.snmp_kinds));
    let bacnet_kinds = kinds(&a.bacnet_kinds);
    // Without --dir: a fresh directory with an unpredictable name, only the owner's
    // (0700), removed when this returns.
    let (dir, _temporary) = match &a.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("wattchdog-demo-")
                .tempdir()
                .context("cannot create the demo's directory")?;
            (t.path().to_owned(), Some(t))
        }
    };
    let opts = DemoOptions {
        speed: a.speed,
        listen: a.listen.clone(),
        mqtt_kinds,
        snmp_kinds,
        bacnet_kinds,
        variant: a.variant.clone(),
        seed: a.seed,
        intensity,
        dir: dir.clone(),
    };
    let mut seen = std::collections::HashSet::new();
    let result = runtime()?.block_on(serve(
        opts,
        &mut |url, schedule| {
            println!("wattchdog demo: dashboard at {url}");
            println!("(the token is in the link; Ctrl-C stops)\nattacks (wall-clock time):");
            for (at, scenario, devices) in schedule {
                println!("  {at}  {scenario} on {devices}");
            }
        },
        &mut |o: &Output| {
            if let Output::Alert(al) = o {
                if seen.insert(al.id.clone()) {
                    println!(
                        "alert {:?} {} {}: {}",
                        al.severity, al.device, al.detector, al.summary
                    );
                }
            }
            Ok(())
        },
        stop_signal(),
    ));
    result?;
    Ok(DemoSummary { alerts: seen.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_config_is_private_and_never_written_through_a_planted_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let cfg = dir.path().join("demo.toml");
        std::os::unix::fs::symlink(&victim, &cfg).unwrap();
        write_private(&cfg, "token = \"secret\"").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "token = \"secret\"");
        let meta = std::fs::symlink_metadata(&cfg).unwrap();
        assert!(meta.is_file(), "a file, not the link");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        write_private(&cfg, "again").unwrap();
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "again");
    }
}

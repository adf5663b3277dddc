//! `wattchdog simulate`: a simulated facility with scheduled attacks, written as a
//! labelled capture (JSONL or pcap), or served live over Modbus TCP or published to MQTT.

use crate::app::cli::SimulateArgs;
use crate::app::{runtime, stop_signal, Summary};
use crate::sim::{self, publish, serve};
use crate::source::{split_compression, Compression};
use anyhow::{Context, Result};
use serde::Serialize;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// What was simulated (the human text goes to standard error).
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SimulateSummary {
    /// A capture and its labels.
    Wrote {
        /// The capture.
        capture: PathBuf,
        /// Simulated hours.
        hours: f64,
        /// Seed.
        seed: u64,
        /// The labels sidecar.
        labels: PathBuf,
        /// Attacks scheduled.
        attacks: usize,
    },
    /// Devices served over Modbus TCP until stopped.
    Served {
        /// Devices.
        devices: usize,
    },
    /// Messages published to MQTT until stopped.
    Published {
        /// Messages.
        messages: u64,
    },
}

impl fmt::Display for SimulateSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wrote {
                capture,
                hours,
                seed,
                labels,
                attacks,
            } => writeln!(
                f,
                "wrote {} ({hours} h, seed {seed}) and {} ({attacks} attacks)",
                capture.display(),
                labels.display()
            ),
            Self::Served { .. } => Ok(()),
            Self::Published { messages } => writeln!(f, "published {messages} messages"),
        }
    }
}

impl Summary for SimulateSummary {
    fn human_to_stderr(&self) -> bool {
        true
    }
}

/// `wattchdog simulate`.
pub fn run(a: SimulateArgs) -> Result<SimulateSummary> {
    let mut facility = match &a.facility {
        Some(p) => sim::Facility::load(p)?,
        None => sim::Facility::variant(&a.variant)?,
    };
    if let Some(site) = &a.site {
        facility.site.clone_from(site);
    }
    let opts = sim::SimOptions {
        start: match (&a.start, &a.serve_modbus) {
            (Some(t), _) => crate::time::TimeFormat::Auto.parse(t).context("--start")?,
            // Live devices run on the wall clock: start on the current second.
            (None, _) if a.serve_modbus.is_some() || a.publish_mqtt.is_some() => {
                chrono::Utc::now().timestamp() * 1000
            }
            (None, _) => 1_783_382_400_000, // 2026-07-07T00:00:00Z
        },
        hours: a.hours,
        seed: a.seed,
        attacks: sim::parse_attacks(&a.attacks)?,
        intensity: sim::Intensity::parse(&a.intensity)
            .with_context(|| format!("--intensity {:?}: use subtle or obvious", a.intensity))?,
    };
    anyhow::ensure!(
        a.hours > 0.0 && a.hours.is_finite(),
        "--hours must be positive"
    );
    if let Some(addr) = &a.serve_modbus {
        return serve_modbus(&a, addr, facility, &opts);
    }
    if let Some(url) = &a.publish_mqtt {
        return publish_mqtt(&a, url, facility, &opts);
    }
    let file =
        File::create(&a.output).with_context(|| format!("cannot create {}", a.output.display()))?;
    let name = a.output.to_string_lossy().into_owned();
    let pcap = crate::source::detect_format(&a.output) == crate::source::Format::Pcap;
    anyhow::ensure!(
        a.write_config.is_none() || pcap,
        "--write-config needs --serve-modbus or a .pcap output"
    );
    let labels = match split_compression(&name).1 {
        _ if pcap => {
            anyhow::ensure!(
                !name.to_ascii_lowercase().ends_with(".pcapng"),
                "the simulator writes classic pcap: name the output .pcap"
            );
            let mut w = BufWriter::new(file);
            let l = sim::pcap::simulate_pcap(&facility, &opts, &mut w)?;
            w.flush()?;
            if let Some(path) = &a.write_config {
                let devices = sim::pcap::devices(&facility, &opts)?;
                std::fs::write(path, sim::pcap::replay_config(&devices, &facility.site))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            l
        }
        Compression::None => {
            let mut w = BufWriter::new(file);
            let l = sim::simulate(&facility, &opts, &mut w)?;
            w.flush()?;
            l
        }
        Compression::Gzip => {
            let mut w = flate2::write::GzEncoder::new(
                BufWriter::new(file),
                flate2::Compression::new(a.level.unwrap_or(6).clamp(0, 9) as u32),
            );
            let l = sim::simulate(&facility, &opts, &mut w)?;
            w.finish()?.flush()?;
            l
        }
        Compression::Zstd => {
            let mut w =
                zstd::stream::write::Encoder::new(BufWriter::new(file), a.level.unwrap_or(9))?;
            let l = sim::simulate(&facility, &opts, &mut w)?;
            w.finish()?.flush()?;
            l
        }
    };
    let labels_path = sim::labels_path(&a.output);
    std::fs::write(&labels_path, serde_json::to_string_pretty(&labels)? + "\n")
        .with_context(|| format!("cannot write {}", labels_path.display()))?;
    Ok(SimulateSummary::Wrote {
        capture: a.output.clone(),
        hours: a.hours,
        seed: a.seed,
        labels: labels_path,
        attacks: labels.len(),
    })
}

/// Checks the live-simulation options, writes the labels and opens the capture.
fn live_simulation(
    a: &SimulateArgs,
    facility: &crate::sim::Facility,
    opts: &crate::sim::SimOptions,
) -> Result<(crate::sim::Simulator, BufWriter<File>, crate::time::Clock)> {
    use crate::sim;
    anyhow::ensure!(
        a.speed > 0.0 && a.speed <= 10_000.0,
        "--speed must be in (0, 10000]"
    );
    let name = a.output.to_string_lossy();
    anyhow::ensure!(
        !name.ends_with(".gz") && !name.ends_with(".zst"),
        "a live simulation streams its capture: give a plain .jsonl output"
    );
    let simulator = sim::Simulator::new(facility.clone(), opts)?;
    let labels_path = sim::labels_path(&a.output);
    std::fs::write(
        &labels_path,
        serde_json::to_string_pretty(&simulator.labels())? + "\n",
    )
    .with_context(|| format!("cannot write {}", labels_path.display()))?;
    let out = BufWriter::new(
        File::create(&a.output).with_context(|| format!("cannot create {}", a.output.display()))?,
    );
    let clock = crate::time::Clock {
        epoch: opts.start,
        speed: a.speed,
    };
    Ok((simulator, out, clock))
}

fn publish_mqtt(
    a: &SimulateArgs,
    url: &str,
    facility: crate::sim::Facility,
    opts: &crate::sim::SimOptions,
) -> Result<SimulateSummary> {
    let popts = publish::PublishOptions::from_url(url, a.sparkplug).map_err(anyhow::Error::msg)?;
    let (simulator, out, clock) = live_simulation(a, &facility, opts)?;
    eprintln!(
        "publishing {} devices to {url} ({}) at {}x; capture {}; Ctrl-C stops",
        simulator.devices().len(),
        if a.sparkplug { "Sparkplug B" } else { "JSON" },
        a.speed,
        a.output.display()
    );
    let sent = runtime()?.block_on(publish::publish(
        simulator,
        facility.site.clone(),
        popts,
        clock,
        Box::new(out),
        stop_signal(),
    ))?;
    Ok(SimulateSummary::Published { messages: sent })
}

fn serve_modbus(
    a: &SimulateArgs,
    addr: &str,
    facility: crate::sim::Facility,
    opts: &crate::sim::SimOptions,
) -> Result<SimulateSummary> {
    let (simulator, out, clock) = live_simulation(a, &facility, opts)?;
    let rt = runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        let devices = serve::served_devices(&simulator)?;
        let (snmp, served_snmp) = match &a.serve_snmp {
            Some(at) => snmp_agents(a, at, &devices).await?,
            None => (None, serve::SnmpServed::default()),
        };
        for (name, _, at) in &served_snmp.devices {
            eprintln!("serving {name} over SNMPv2c on {at}");
        }
        let (bacnet, served_bacnet) = match &a.serve_bacnet {
            Some(at) => bacnet_devices(a, at, &devices).await?,
            None => (None, serve::BacnetServed::default()),
        };
        for d in &served_bacnet.devices {
            eprintln!(
                "serving {} over BACnet/IP on {} (device {})",
                d.name, d.address, d.instance
            );
        }
        let others = serve::Others {
            snmp: served_snmp,
            bacnet: served_bacnet,
        };
        if let Some(p) = &a.write_config {
            let text = serve::run_config_with(
                &facility.site,
                bound,
                &devices,
                &others,
                clock,
                &a.poll_interval,
            );
            // Written whole under a temporary name, so a reader never sees half a file.
            let tmp = p.with_extension("toml.tmp");
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, p))
                .with_context(|| format!("cannot write {}", p.display()))?;
        }
        eprintln!(
            "serving {} devices on {bound} (units 1-{}) at {}x; capture {}; Ctrl-C stops",
            devices.len(),
            devices.len(),
            a.speed,
            a.output.display()
        );
        serve::serve(
            simulator,
            facility.site.clone(),
            listener,
            clock,
            Box::new(out),
            Default::default(),
            snmp,
            bacnet,
            stop_signal(),
        )
        .await?;
        Ok(SimulateSummary::Served {
            devices: devices.len(),
        })
    })
}

/// The devices of `--serve-bacnet` (of `--bacnet-kinds`), bound.
async fn bacnet_devices(
    a: &SimulateArgs,
    at: &str,
    devices: &[serve::ServedDevice],
) -> Result<(Option<serve::BacnetServe>, serve::BacnetServed)> {
    let base: std::net::SocketAddr = at
        .parse()
        .with_context(|| format!("--serve-bacnet {at:?}: give ip:port"))?;
    let kinds: Vec<&str> = a.bacnet_kinds.split(',').map(str::trim).collect();
    let (served, config) = serve::bind_bacnet_devices(base, &kinds, devices)
        .await
        .context("--serve-bacnet")?;
    Ok((Some(served), config))
}

/// The agents of `--serve-snmp` (devices of `--snmp-kinds`), bound.
async fn snmp_agents(
    a: &SimulateArgs,
    at: &str,
    devices: &[serve::ServedDevice],
) -> Result<(Option<serve::SnmpServe>, serve::SnmpServed)> {
    let base: std::net::SocketAddr = at
        .parse()
        .with_context(|| format!("--serve-snmp {at:?}: give ip:port"))?;
    let trap_to = match &a.snmp_trap_to {
        Some(t) => Some(
            t.parse::<std::net::SocketAddr>()
                .with_context(|| format!("--snmp-trap-to {t:?}: give ip:port"))?,
        ),
        None => None,
    };
    let kinds: Vec<&str> = a.snmp_kinds.split(',').map(str::trim).collect();
    let (agents, served) = serve::bind_snmp_agents(base, &kinds, devices, trap_to)
        .await
        .context("--serve-snmp")?;
    Ok((Some(agents), served))
}

//! An embedded MQTT broker (rumqttd) on a loopback port, so the demo and the tests need
//! nothing installed. rumqttd's `start()` blocks and has no shutdown: it runs on its own
//! thread for the life of the process.
//!
//! Demo-sized, not a production broker (run Mosquitto or EMQX there, with their limits):
//! - rumqttd keeps a log per subscription filter (and per topic published with no
//!   subscriber) and never drops one, so each log is capped (`log_bytes`; the demo's
//!   [`DEMO_LOG_BYTES`], 3 MiB): what a subscriber lagging further behind misses is lost.
//!   The demo's in-process collector stays seconds ahead of that; a full-speed benchmark
//!   does not (it lost a third of 200,000 readings at 3 MiB), so benches and tests give a
//!   larger cap. With 1 GiB a log, a few filters subscribed once grew the demo by 4.5 MB/s
//!   at 300×.
//! - With a [`Login`], every client must give it: on a shared host, other users cannot
//!   connect, subscribe (each filter costs a log) or publish forged readings.
//! - At most 64 connections, 256 KiB a message.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{info, warn};

/// Why the broker did not come up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// No port, or it never accepted connections.
    #[error("embedded MQTT broker: {0}")]
    Start(String),
}

/// What each filter's log holds in the demo.
pub const DEMO_LOG_BYTES: usize = 3 << 20;

/// Segments a filter's log is cut into (the oldest goes when the log is full).
const SEGMENTS: usize = 3;

/// The user name and password the broker requires of every client.
#[derive(Debug, Clone)]
pub struct Login {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl Login {
    /// Fresh, unguessable credentials (hex, so they need no quoting anywhere).
    pub fn random() -> Self {
        let hex = |n: usize| -> String {
            (0..n)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect()
        };
        Self {
            username: format!("demo-{}", hex(4)),
            password: hex(16),
        }
    }
}

/// Starts a broker listening on `127.0.0.1:port` (0: a free port), requiring `login` of
/// every client if given, each filter's log holding about `log_bytes`, and returns its
/// address once it accepts connections.
pub fn start(
    port: u16,
    login: Option<&Login>,
    log_bytes: usize,
) -> Result<SocketAddr, BrokerError> {
    let segment_bytes = (log_bytes / SEGMENTS).max(1024);
    let port = if port == 0 {
        // rumqttd cannot report the port it bound: take a free one first.
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| BrokerError::Start(e.to_string()))?
            .port()
    } else {
        port
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let auth = login.map_or(String::new(), |l| {
        format!(
            "[v4.1.connections.auth]\n{:?} = {:?}\n",
            l.username, l.password
        )
    });
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 1000
max_segment_size = {segment_bytes}
max_segment_count = {SEGMENTS}

[v4.1]
name = "v4-1"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 262144
max_inflight_count = 1000
dynamic_filters = true
{auth}"#
    );
    let config: rumqttd::Config =
        toml::from_str(&text).map_err(|e| BrokerError::Start(e.to_string()))?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                warn!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| BrokerError::Start(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(BrokerError::Start(format!("nothing listens on {addr}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    info!(%addr, "embedded MQTT broker up");
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet};

    /// The broker's answer to a CONNECT with these credentials.
    async fn connect(addr: SocketAddr, login: Option<(&str, &str)>) -> Option<ConnectReturnCode> {
        let mut opts = MqttOptions::new("probe", addr.ip().to_string(), addr.port());
        if let Some((u, p)) = login {
            opts.set_credentials(u, p);
        }
        let (_client, mut events) = AsyncClient::new(opts, 8);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Some(ack.code),
                Ok(_) => {}
                // rumqttd closes the connection without a CONNACK when the login is wrong.
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Some(code),
                Err(_) => return None,
            }
        }
    }

    #[tokio::test]
    async fn with_a_login_strangers_cannot_connect() {
        let login = Login::random();
        let addr = start(0, Some(&login), DEMO_LOG_BYTES).unwrap();
        let accepted = Some(ConnectReturnCode::Success);
        assert_ne!(connect(addr, None).await, accepted, "anonymous");
        assert_ne!(
            connect(addr, Some((&login.username, "guess"))).await,
            accepted,
            "a wrong password"
        );
        assert_eq!(
            connect(addr, Some((&login.username, &login.password))).await,
            accepted
        );
    }
}

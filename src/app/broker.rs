//! An embedded MQTT broker (rumqttd) on a loopback port, so the demo and the tests need
//! nothing installed. rumqttd's `start()` blocks and has no shutdown: it runs on its own
//! thread for the life of the process.

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

/// Starts a broker listening on `127.0.0.1:port` (0: a free port) and returns its address
/// once it accepts connections.
pub fn start(port: u16) -> Result<SocketAddr, BrokerError> {
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
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 1000
dynamic_filters = true
"#
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

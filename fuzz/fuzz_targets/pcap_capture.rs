//! A whole pcap or pcapng file, through link, IP, TCP, Modbus and the register maps of a
//! configured device.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wattchdog::model::points::Registry;
use wattchdog::source::pcap::PcapSource;
use wattchdog::source::CaptureSource;
use wattchdog::Config;

fn config() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| {
        Config::from_toml_str(
            "[[modbus.devices]]\nname = \"chiller-1\"\naddress = \"10.0.0.5:502\"\nunit = 1\nprofile = \"chiller-generic\"\n",
            "fuzz",
        )
        .expect("valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let reader = Box::new(std::io::Cursor::new(data.to_vec()));
    if let Ok(mut src) = PcapSource::new(reader, "fuzz.pcap".into(), config().wire.clone()) {
        let mut reg = Registry::new(10_000);
        while src.next_event(&mut reg).is_some() {}
    }
});

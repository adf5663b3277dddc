//! A BACnet/IP datagram, as the collector's listener, a packet capture and a simulated
//! device (`simulate --serve-bacnet`) read it: the envelope, every service decoder on its
//! parameters, and the device's answer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wattchdog::protocol::bacnet::{self, Apdu};
use wattchdog::protocol::bacnet_map;
use wattchdog::sim::bacnet_device::{Device, DeviceCounts};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = bacnet::decode(data) {
        if let Some(
            Apdu::Confirmed { body, service, .. }
            | Apdu::ComplexAck { body, service, .. }
            | Apdu::Unconfirmed { body, service },
        ) = d.apdu
        {
            let _ = bacnet::ReadPropertyMultipleAck::decode(body);
            let _ = bacnet::ReadPropertyMultiple::decode(body);
            let _ = bacnet::ReadProperty::decode(body);
            let _ = bacnet::ReadProperty::decode_ack(body);
            let _ = bacnet::CovNotification::decode(body);
            let _ = bacnet::SubscribeCov::decode(body);
            let _ = bacnet::IAm::decode(body);
            let _ = bacnet::WhoIs::decode(body);
            let _ = bacnet::decode_writes(service, body);
        }
    }
    let map = bacnet_map::named("chiller-bacnet").expect("built-in map");
    let mut device = Device::new("chiller-1", 1001, map);
    let from = "127.0.0.1:47808".parse().expect("address");
    let answer = device.answer(data, from, &|_| Some(7.0), 0, &DeviceCounts::default());
    if let Some(reply) = answer.reply {
        // Whatever the device answers is BACnet/IP it can read back.
        assert!(bacnet::decode(&reply).is_ok());
    }
    for (_, n) in device.notifications(&|_| Some(8.0), 1) {
        assert!(bacnet::decode(&n).is_ok());
    }
});

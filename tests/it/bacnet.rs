//! The simulated facility's chillers and CRAHs read over BACnet/IP (ReadPropertyMultiple
//! and COV subscriptions) by `wattchdog run`: a chiller setpoint tamper is detected as
//! over Modbus, and as in a replay of the capture the simulator wrote.

use crate::modbus::served_run_alerts_like_a_replay;

#[test]
fn run_over_bacnet_detects_a_setpoint_tamper_like_a_replay() {
    let (report, live, replay) = served_run_alerts_like_a_replay(
        "chiller-setpoint-tamper",
        &["--serve-bacnet", "127.0.0.1:0"],
        ("chiller-2", "physics"),
    );
    let bacnet = report["bacnet"].as_array().expect("BACnet devices polled");
    assert_eq!(bacnet.len(), 6, "two chillers and four CRAHs: {bacnet:?}");
    for d in bacnet {
        assert_eq!(d["connects"], 1, "found once, never lost: {d}");
        assert!(d["good"].as_u64().unwrap() > 0, "{d}");
        assert!(d["notifications"].as_u64().unwrap() > 0, "COV: {d}");
        assert_eq!(d["bad"], 0, "{d}");
    }
    // BACnet carries the plant's values as IEEE floats, as the capture holds them: the
    // live run and the replay mostly agree.
    let common = live.intersection(&replay).count();
    let union = live.union(&replay).count();
    assert!(
        common * 10 >= union * 8,
        "live {live:?} and replay {replay:?} should mostly agree"
    );
}

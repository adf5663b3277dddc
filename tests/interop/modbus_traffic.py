#!/usr/bin/env python3
"""Modbus/TCP traffic from pymodbus clients, for packet-capture tests. Each client can
bind its own loopback source address (127.0.0.0/8 is all loopback on Linux), so one
machine plays the BMS, a rogue workstation and a scanner. Prints one JSON object.

    modbus_traffic.py --port P [--source IP] poll PLAN.json SECONDS INTERVAL [UNIT ADDRESS VALUE]
        PLAN.json: [{"unit": 1, "reads": [[function, address, count], ...]}, ...]
        With UNIT ADDRESS VALUE, writes that register once after the first poll cycle,
        on the polling connection, as a master does.
    modbus_traffic.py --port P [--source IP] write UNIT ADDRESS VALUE
    modbus_traffic.py --port P [--source IP] scan FIRST_UNIT LAST_UNIT
    modbus_traffic.py --port P [--source IP] sweep UNIT FIRST_ADDRESS LAST_ADDRESS
        (holding registers one at a time, as a register-mapping tool does)
"""
import argparse
import json
import time

from pymodbus.client import ModbusTcpClient


def read(c, function, address, count, unit):
    fn = {1: c.read_coils, 2: c.read_discrete_inputs,
          3: c.read_holding_registers, 4: c.read_input_registers}[function]
    return fn(address, count=count, device_id=unit)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--source", default="127.0.0.1")
    ap.add_argument("op", choices=["poll", "write", "scan", "sweep"])
    ap.add_argument("args", nargs="+")
    a = ap.parse_args()
    c = ModbusTcpClient("127.0.0.1", port=a.port, timeout=2, source_address=(a.source, 0))
    if not c.connect():
        raise SystemExit("cannot connect")
    out = {"requests": 0, "errors": 0}
    try:
        if a.op == "poll":
            plan = json.load(open(a.args[0]))
            end = time.monotonic() + float(a.args[1])
            interval = float(a.args[2])
            write = [int(x) for x in a.args[3:6]]
            while time.monotonic() < end:
                for dev in plan:
                    for function, address, count in dev["reads"]:
                        r = read(c, function, address, count, dev["unit"])
                        out["requests"] += 1
                        out["errors"] += int(r.isError())
                if write:
                    unit, address, value = write
                    r = c.write_register(address, value, device_id=unit)
                    out["requests"] += 1
                    out["errors"] += int(r.isError())
                    write = []
                time.sleep(interval)
        elif a.op == "write":
            unit, address, value = (int(x) for x in a.args[:3])
            r = c.write_register(address, value, device_id=unit)
            out["requests"] += 1
            out["errors"] += int(r.isError())
        elif a.op == "sweep":
            unit, first, last = (int(x) for x in a.args[:3])
            for address in range(first, last + 1):
                r = read(c, 3, address, 1, unit)
                out["requests"] += 1
                out["errors"] += int(r.isError())
        else:
            first, last = int(a.args[0]), int(a.args[1])
            for unit in range(first, last + 1):
                try:
                    r = read(c, 3, 0, 1, unit)
                    out["errors"] += int(r.isError())
                except Exception:  # an unanswered unit id times out: that is a scan
                    out["errors"] += 1
                    c.close()
                    c.connect()
                out["requests"] += 1
    finally:
        c.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

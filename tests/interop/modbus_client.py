#!/usr/bin/env python3
"""A pymodbus TCP client for interop tests. Prints one JSON object.

    modbus_client.py --port P --unit U read TABLE ADDRESS COUNT
    modbus_client.py --port P --unit U write-register ADDRESS VALUE
"""
import argparse
import json

from pymodbus.client import ModbusTcpClient


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--unit", type=int, required=True)
    ap.add_argument("op", choices=["read", "write-register"])
    ap.add_argument("args", nargs="+")
    a = ap.parse_args()
    c = ModbusTcpClient("127.0.0.1", port=a.port, timeout=3)
    if not c.connect():
        raise SystemExit("cannot connect")
    try:
        if a.op == "read":
            table, address, count = a.args[0], int(a.args[1]), int(a.args[2])
            fn = {"holding": c.read_holding_registers, "input": c.read_input_registers,
                  "coil": c.read_coils, "discrete": c.read_discrete_inputs}[table]
            r = fn(address, count=count, device_id=a.unit)
            if r.isError():
                print(json.dumps({"error": str(r)}))
            elif table in ("coil", "discrete"):
                print(json.dumps({"bits": [int(b) for b in r.bits[:count]]}))
            else:
                print(json.dumps({"words": r.registers}))
        else:
            r = c.write_register(int(a.args[0]), int(a.args[1]), device_id=a.unit)
            print(json.dumps({"error": str(r)} if r.isError() else {"ok": True}))
    finally:
        c.close()


if __name__ == "__main__":
    main()

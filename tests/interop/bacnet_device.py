#!/usr/bin/env python3
"""A bacpypes3 BACnet/IP device laid out from a wattchdog BACnet object map.

bacpypes3 is an independent BACnet implementation: it answers Who-Is, ReadProperty,
ReadPropertyMultiple and SubscribeCOV from its own object model, so the collector's
codec and behaviour are checked against another stack. Usage:

    bacnet_device.py --port P --instance N --profile MAP.toml --values VALUES.json
                     [--fault METRIC]

VALUES.json maps metric -> value (the metric's unit; the map's scale and offset are
undone here). --fault sets the object's status flags to fault and its reliability to
unreliable-other. Each line `METRIC=VALUE` on standard input writes a new present
value (subscribers hear of it through COV) and prints "changed". Prints "ready" once
listening.
"""
import argparse
import asyncio
import json
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

from bacpypes3.ipv4.app import NormalApplication
from bacpypes3.local.analog import (AnalogInputObject, AnalogOutputObject,
                                    AnalogValueObject)
from bacpypes3.local.binary import (BinaryInputObject, BinaryOutputObject,
                                    BinaryValueObject)
from bacpypes3.local.device import DeviceObject
from bacpypes3.pdu import IPv4Address

ANALOG = {"analog-input": AnalogInputObject, "analog-output": AnalogOutputObject,
          "analog-value": AnalogValueObject}
BINARY = {"binary-input": BinaryInputObject, "binary-output": BinaryOutputObject,
          "binary-value": BinaryValueObject}


def raw_of(entry, value):
    return (value - entry.get("offset", 0.0)) / entry.get("scale", 1.0)


def make(entry, value, fault):
    kind, instance = entry["object"].split(":")
    ident = (kind, int(instance))
    flags = [0, 1 if fault else 0, 0, 0]
    reliability = "unreliableOther" if fault else "noFaultDetected"
    if kind in ANALOG:
        return ANALOG[kind](objectIdentifier=ident, objectName=entry["metric"],
                            presentValue=raw_of(entry, value), statusFlags=flags,
                            reliability=reliability, eventState="normal",
                            outOfService=False, units="noUnits", covIncrement=0.0)
    return BINARY[kind](objectIdentifier=ident, objectName=entry["metric"],
                        presentValue="active" if value else "inactive",
                        statusFlags=flags, reliability=reliability,
                        eventState="normal", outOfService=False)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--instance", type=int, required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--values", required=True)
    ap.add_argument("--fault", default=None)
    args = ap.parse_args()
    with open(args.profile, "rb") as f:
        profile = tomllib.load(f)
    with open(args.values) as f:
        values = json.load(f)
    device = DeviceObject(objectIdentifier=("device", args.instance),
                          objectName=f"bacpypes3-{profile['kind']}",
                          vendorIdentifier=999)
    app = NormalApplication(device, IPv4Address(f"127.0.0.1/8:{args.port}"))
    objects = {}
    for e in profile["objects"]:
        if e["metric"] in values:
            o = make(e, values[e["metric"]], e["metric"] == args.fault)
            app.add_object(o)
            objects[e["metric"]] = (e, o)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        metric, value = line.strip().split("=")
        e, o = objects[metric]
        o.presentValue = raw_of(e, float(value))
        print("changed", flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())

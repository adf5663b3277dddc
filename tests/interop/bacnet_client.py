#!/usr/bin/env python3
"""A bacpypes3 client that discovers and reads a BACnet/IP device.

Usage:

    bacnet_client.py --device HOST:PORT --instance N --objects OBJ[,OBJ...]
                     [--write OBJ=VALUE ...]

Sends Who-Is for instance N to the device and waits for its I-Am, reads the device
object's name and object list, reads each object's present value with ReadProperty
and all of them with ReadPropertyMultiple, then tries each write (WriteProperty of
the present value, priority 8). Prints one JSON object: {"iam": instance,
"name": ..., "object_list": [...], "read": {obj: value}, "rpm": {obj: value},
"writes": {obj: "ok" | error text}}.
"""
import argparse
import asyncio
import json

from bacpypes3.app import Application
from bacpypes3.pdu import Address


def plain(v):
    if hasattr(v, "asn1"):
        return str(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", required=True)
    ap.add_argument("--instance", type=int, required=True)
    ap.add_argument("--objects", required=True)
    ap.add_argument("--write", action="append", default=[])
    args = ap.parse_args()
    app = Application.from_args(argparse.Namespace(
        name="wattchdog-interop", instance=999001, network=0,
        address="127.0.0.1/8:0", vendoridentifier=999, foreign=None, ttl=30,
        bbmd=None, loglevel="WARNING", debug=None, color=None, route_aware=None))
    address = Address(args.device)
    out = {}
    iams = await app.who_is(args.instance, args.instance, address, timeout=5)
    out["iam"] = iams[0].iAmDeviceIdentifier[1] if iams else None
    device = f"device,{args.instance}"
    out["name"] = str(await app.read_property(address, device, "object-name"))
    out["object_list"] = [f"{o[0]},{o[1]}" for o in
                          await app.read_property(address, device, "object-list")]
    objects = args.objects.split(",")
    objects = [o.replace(":", ",") for o in objects]
    out["read"] = {}
    for o in objects:
        out["read"][o] = plain(await app.read_property(address, o, "present-value"))
    spec = []
    for o in objects:
        spec += [o, ["present-value"]]
    out["rpm"] = {}
    for (obj, prop, index, value) in await app.read_property_multiple(address, spec):
        out["rpm"][f"{obj[0]},{obj[1]}"] = plain(value)
    out["writes"] = {}
    for w in args.write:
        o, v = w.split("=")
        o = o.replace(":", ",")
        try:
            await app.write_property(address, o, "present-value", float(v), priority=8)
            out["writes"][o] = "ok"
        except BaseException as e:  # bacpypes3 raises the device's error as a BaseException
            out["writes"][o] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
    app.close()


if __name__ == "__main__":
    asyncio.run(main())

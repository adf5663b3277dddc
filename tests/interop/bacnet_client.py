#!/usr/bin/env python3
"""A bacpypes3 client that discovers and reads a BACnet/IP device.

Usage:

    bacnet_client.py --device HOST:PORT --instance N --objects OBJ[,OBJ...]
                     [--source IP] [--write OBJ[/PROPERTY]=VALUE ...] [--dcc]

Sends Who-Is for instance N to the device and waits for its I-Am, reads the device
object's name and object list, reads each object's present value with ReadProperty
and all of them with ReadPropertyMultiple, then tries each write (WriteProperty,
priority 8; of the present value unless a property is named) and, with --dcc, a
DeviceCommunicationControl that disables the device for 5 minutes. Sends from
--source (default 127.0.0.1). Prints one JSON object: {"iam": instance, "name": ...,
"object_list": [...], "read": {obj: value}, "rpm": {obj: value},
"writes": {obj[/property]: "ok" | error text}, "dcc": "ok" | error text}.
"""
import argparse
import asyncio
import json

from bacpypes3.apdu import DeviceCommunicationControlRequest
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
    ap.add_argument("--source", default="127.0.0.1")
    ap.add_argument("--dcc", action="store_true")
    args = ap.parse_args()
    app = Application.from_args(argparse.Namespace(
        name="wattchdog-interop", instance=999001, network=0,
        address=f"{args.source}/8:0", vendoridentifier=999, foreign=None, ttl=30,
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
        target, v = w.split("=")
        o, _, prop = target.partition("/")
        o = o.replace(":", ",")
        prop = prop or "present-value"
        value = bool(int(v)) if prop == "out-of-service" else float(v)
        key = o if prop == "present-value" else f"{o}/{prop}"
        try:
            await app.write_property(address, o, prop, value, priority=8)
            out["writes"][key] = "ok"
        except BaseException as e:  # bacpypes3 raises the device's error as a BaseException
            out["writes"][key] = f"{type(e).__name__}: {e}"
    if args.dcc:
        req = DeviceCommunicationControlRequest(
            timeDuration=5, enableDisable="disable", destination=address)
        try:
            await app.request(req)
            out["dcc"] = "ok"
        except BaseException as e:
            out["dcc"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
    app.close()


if __name__ == "__main__":
    asyncio.run(main())

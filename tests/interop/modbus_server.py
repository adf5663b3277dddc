#!/usr/bin/env python3
"""A pymodbus TCP server laid out from a wattchdog register map.

Encodes each value independently of wattchdog (Python's struct, the map's word and
byte orders) and serves it, so the poller's decoding is checked against another
implementation. Usage:

    modbus_server.py --port P --profile MAP.toml --values VALUES.json [--unit U]

VALUES.json maps metric -> value. Prints "ready" once listening.
"""
import argparse
import asyncio
import json
import struct
import tomllib

from pymodbus.datastore import (ModbusDeviceContext, ModbusServerContext,
                                ModbusSparseDataBlock)
from pymodbus.server import StartAsyncTcpServer

FORMATS = {"u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "u64": ">Q",
           "f32": ">f", "f64": ">d"}


def words_of(entry, value, word_order, byte_order):
    fmt = FORMATS[entry["type"]]
    raw = (value - entry.get("offset", 0.0)) / entry.get("scale", 1.0)
    if entry["type"] not in ("f32", "f64"):
        raw = round(raw)
    data = struct.pack(fmt, raw)
    words = [data[i:i + 2] for i in range(0, len(data), 2)]
    if byte_order == "little":
        words = [w[::-1] for w in words]
    if word_order == "little":
        words.reverse()
    return [int.from_bytes(w, "big") for w in words]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--values", required=True)
    ap.add_argument("--unit", type=int, default=1)
    args = ap.parse_args()
    with open(args.profile, "rb") as f:
        profile = tomllib.load(f)
    with open(args.values) as f:
        values = json.load(f)
    tables = {"holding": {}, "input": {}, "coil": {}, "discrete": {}}
    for e in profile["registers"]:
        if e["metric"] not in values:
            continue
        v = values[e["metric"]]
        t = tables[e["table"]]
        wo = e.get("word_order", profile.get("word_order", "big"))
        bo = e.get("byte_order", profile.get("byte_order", "big"))
        if e["type"] == "bool":
            t[e["address"]] = bool(v)
        elif e["type"] == "bit":
            t[e["address"]] = t.get(e["address"], 0) | (int(v) << e["bit"])
        else:
            for k, w in enumerate(words_of(e, v, wo, bo)):
                t[e["address"] + k] = w

    def block(values):
        # Keys are protocol addresses (pymodbus 3.16; older releases shifted them by one).
        return ModbusSparseDataBlock(values or {0: 0})

    device = ModbusDeviceContext(di=block(tables["discrete"]), co=block(tables["coil"]),
                                 hr=block(tables["holding"]), ir=block(tables["input"]))
    context = ModbusServerContext(devices={args.unit: device}, single=False)

    async def run():
        print("ready", flush=True)
        await StartAsyncTcpServer(context, address=("127.0.0.1", args.port))

    asyncio.run(run())


if __name__ == "__main__":
    main()

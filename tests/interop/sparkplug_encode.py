#!/usr/bin/env python3
"""Writes a Sparkplug B message sequence, encoded by hand from the published
sparkplug_b.proto field numbers (independently of wattchdog's prost structs).

    sparkplug_encode.py OUTDIR

Writes 1-NBIRTH.bin, 2-DBIRTH.bin, 3-DDATA.bin, 4-DDATA.bin (a sequence gap),
5-DDEATH.bin; topics are in topics.txt, one "file topic" pair per line.
"""
import os
import struct
import sys


def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire):
    return varint((field << 3) | wire)


def field_varint(field, n):
    return key(field, 0) + varint(n)


def field_bytes(field, data):
    return key(field, 2) + varint(len(data)) + data


def metric(name=None, alias=None, datatype=None, value=None, ts=None):
    m = b""
    if name is not None:
        m += field_bytes(1, name.encode())
    if alias is not None:
        m += field_varint(2, alias)
    if ts is not None:
        m += field_varint(3, ts)
    m += field_varint(4, datatype)
    if datatype in (1, 2, 3):          # Int8/16/32: two's complement in uint32
        m += field_varint(10, value & 0xFFFFFFFF)
    elif datatype in (5, 6, 7):
        m += field_varint(10, value)
    elif datatype in (4, 8, 13):       # Int64, UInt64, DateTime
        m += field_varint(11, value & 0xFFFFFFFFFFFFFFFF)
    elif datatype == 9:
        m += key(12, 5) + struct.pack("<f", value)
    elif datatype == 10:
        m += key(13, 1) + struct.pack("<d", value)
    elif datatype == 11:
        m += field_varint(14, 1 if value else 0)
    elif datatype in (12, 14):
        m += field_bytes(15, value.encode())
    return m


def payload(ts, seq, metrics):
    p = field_varint(1, ts)
    for m in metrics:
        p += field_bytes(2, m)
    if seq is not None:
        p += field_varint(3, seq)
    return p


def main():
    out = sys.argv[1]
    t = 1783382400000  # 2026-07-07T00:00:00Z
    msgs = [
        ("spBv1.0/lab/NBIRTH/edge1",
         payload(t, 0, [metric("bdSeq", None, 8, 0)])),
        ("spBv1.0/lab/DBIRTH/edge1/ups-9",
         payload(t, 1, [metric("Properties/kind", None, 12, "ups"),
                        metric("input_voltage_v", 1, 9, 231.5),
                        metric("battery_temp_c", 2, 3, -7),
                        metric("on_battery", 3, 11, False),
                        metric("output_power_kw", 4, 10, 412.25),
                        metric("energy_wh", 5, 4, -5000000000)])),
        ("spBv1.0/lab/DDATA/edge1/ups-9",
         payload(t + 1000, 2, [metric(None, 1, 9, 229.0), metric(None, 2, 3, -8),
                               metric(None, 3, 11, True, ts=t + 1500)])),
        ("spBv1.0/lab/DDATA/edge1/ups-9",
         payload(t + 2000, 7, [metric(None, 4, 10, 399.5)])),
        ("spBv1.0/lab/DDEATH/edge1/ups-9", payload(t + 3000, 8, [])),
    ]
    with open(os.path.join(out, "topics.txt"), "w") as f:
        for i, (topic, data) in enumerate(msgs, 1):
            name = f"{i}-{topic.split('/')[2]}.bin"
            with open(os.path.join(out, name), "wb") as b:
                b.write(data)
            f.write(f"{name} {topic}\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Parses what a syslog receiver wrote, independently of wattchdog's code.

Each line must be an RFC 5424 message (header, structured data, message) whose message
is ArcSight CEF, JSON or an OCSF Detection Finding. Prints one JSON object:
{"messages": {HOSTNAME: [{"sd": {...}, "payload": "cef"|"json"|"ocsf", "fields": {...}}]},
 "errors": [...]}. Standard library only.
"""
import json
import re
import sys

HEADER = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S{1,255}) (?P<app>\S{1,48}) "
    r"(?P<procid>\S{1,128}) (?P<msgid>\S{1,32}) (?P<rest>.*)$"
)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)$")
SD_NAME = re.compile(r'[^= \]"]{1,32}')


def structured_data(text):
    """Returns ({sd_id: {param: value}}, the message after it)."""
    if text.startswith("- "):
        return {}, text[2:]
    elements, i = {}, 0
    while i < len(text) and text[i] == "[":
        m = SD_NAME.match(text, i + 1)
        if not m:
            raise ValueError("bad SD-ID at %d" % i)
        sd_id, i, params = m.group(0), m.end(), {}
        while text[i] == " ":
            m = SD_NAME.match(text, i + 1)
            if not m or text[m.end() : m.end() + 2] != '="':
                raise ValueError("bad SD-PARAM at %d" % i)
            name, i, value = m.group(0), m.end() + 2, []
            while text[i] != '"':
                if text[i] == "\\" and text[i + 1] in '"\\]':
                    value.append(text[i + 1])
                    i += 2
                elif text[i] in '"]':
                    raise ValueError("unescaped %r in a param value" % text[i])
                else:
                    value.append(text[i])
                    i += 1
            params[name], i = "".join(value), i + 1
        if text[i] != "]":
            raise ValueError("SD element not closed at %d" % i)
        elements[sd_id], i = params, i + 1
    if not elements:
        raise ValueError("no structured data")
    if text[i : i + 1] != " ":
        raise ValueError("no space before the message")
    return elements, text[i + 1 :]


def cef(text):
    """CEF:Version|Vendor|Product|Version|SignatureID|Name|Severity|Extension."""
    if not text.startswith("CEF:"):
        raise ValueError("not CEF")
    fields, cur, i = [], [], 4
    while len(fields) < 7:
        if i >= len(text):
            raise ValueError("CEF header ends early")
        c = text[i]
        if c == "\\":
            if text[i + 1] not in "|\\":
                raise ValueError("bad header escape \\%s" % text[i + 1])
            cur.append(text[i + 1])
            i += 2
        elif c == "|":
            fields.append("".join(cur))
            cur, i = [], i + 1
        elif c in "\r\n":
            raise ValueError("line break in the CEF header")
        else:
            cur.append(c)
            i += 1
    ext, rest = {}, text[i:]
    # A key is [A-Za-z0-9_]+ followed by an unescaped '='; its value runs to the next key.
    keys = [m for m in re.finditer(r"(?:^| )([A-Za-z0-9_]+)=", rest) if not _escaped(rest, m.end() - 1)]
    for n, m in enumerate(keys):
        end = keys[n + 1].start() if n + 1 < len(keys) else len(rest)
        raw = rest[m.end() : end]
        value, j = [], 0
        while j < len(raw):
            if raw[j] == "\\":
                nxt = raw[j + 1 : j + 2]
                value.append({"n": "\n", "r": "\r"}.get(nxt, nxt))
                if nxt not in "\\=nr" or nxt == "":
                    raise ValueError("bad extension escape \\%s" % nxt)
                j += 2
            elif raw[j] == "=":
                raise ValueError("unescaped = in the value of %s" % m.group(1))
            else:
                value.append(raw[j])
                j += 1
        ext[m.group(1)] = "".join(value)
    if int(fields[0]) != 0 or not 0 <= int(fields[6]) <= 10:
        raise ValueError("bad CEF version or severity")
    return {"version": fields[0], "vendor": fields[1], "product": fields[2], "product_version": fields[3],
            "signature": fields[4], "name": fields[5], "severity": int(fields[6]), "ext": ext}


def _escaped(s, i):
    n = 0
    while i - 1 - n >= 0 and s[i - 1 - n] == "\\":
        n += 1
    return n % 2 == 1


def parse(line):
    m = HEADER.match(line)
    if not m:
        raise ValueError("not an RFC 5424 header")
    pri = int(m["pri"])
    if pri > 191 or not TIMESTAMP.match(m["ts"]):
        raise ValueError("bad PRI or TIMESTAMP")
    sd, msg = structured_data(m["rest"])
    if msg.startswith("CEF:"):
        payload, fields = "cef", cef(msg)
    else:
        fields = json.loads(msg)
        payload = "ocsf" if fields.get("class_uid") == 2004 else "json"
    return m["host"], {"pri": pri, "sd": sd, "payload": payload, "fields": fields}


def main():
    out, errors = {}, []
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line:
                    continue
                try:
                    host, msg = parse(line)
                    out.setdefault(host, []).append(msg)
                except (ValueError, KeyError, IndexError, json.JSONDecodeError) as e:
                    errors.append("%s:%d: %s: %s" % (path, n, e, line[:200]))
    json.dump({"messages": out, "errors": errors}, sys.stdout)


if __name__ == "__main__":
    main()

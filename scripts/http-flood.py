#!/usr/bin/env python3
# usage: scripts/http-flood.py PID N   (a `wattchdog run` with [http] listen = "127.0.0.1:18444")
# Opens N connections that each send half a request line, and reports the server's
# RSS, descriptors and /healthz before, while they are held, and after its idle timeout.
import socket, time, subprocess, sys, resource
h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
pid = sys.argv[1]; N = int(sys.argv[2])
def rss():
    return int(open(f"/proc/{pid}/status").read().split("VmRSS:")[1].split()[0]) // 1024
def fds():
    import os
    return len(os.listdir(f"/proc/{pid}/fd"))
def health():
    t = time.time()
    try:
        s = socket.create_connection(("127.0.0.1", 18444), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        d = s.recv(100); s.close()
        return d.split(b"\r\n")[0].decode(), round(time.time() - t, 3)
    except Exception as e:
        return repr(e), round(time.time() - t, 3)
print("before", rss(), "MB", fds(), "fds", health())
socks = []
for i in range(N):
    try:
        s = socket.create_connection(("127.0.0.1", 18444), timeout=5)
        s.sendall(b"GET / HT")
        socks.append(s)
    except Exception as e:
        print("connect failed at", i, e); break
time.sleep(2)
print(N, "half requests held:", rss(), "MB", fds(), "fds", health())
time.sleep(32)
print("after the idle timeout:", rss(), "MB", fds(), "fds", health())

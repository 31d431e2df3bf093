#!/usr/bin/env python3
"""UDP helper for the broadcast end-to-end tests.

  lan_udp.py listen PORT [--group GROUP] [--iface-ip IP]
      Binds 0.0.0.0:PORT (joining GROUP on the interface with address IP, or on the
      kernel's choice without IP), prints "ready", then one line "from IP:PORT PAYLOAD"
      per datagram, until killed.
  lan_udp.py send DST PORT PAYLOAD [--count N] [--rate PPS] [--iface-ip IP]
      Sends N datagrams "PAYLOAD-i" to DST:PORT with SO_BROADCAST (multicast leaves
      through the interface with address IP when given), at most PPS per second; prints
      "sent N".
"""
import argparse
import socket
import struct
import sys
import time


def listen(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", args.port))
    if args.group:
        iface = socket.inet_aton(args.iface_ip or "0.0.0.0")
        mreq = socket.inet_aton(args.group) + iface
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    print("ready", flush=True)
    while True:
        data, (ip, port) = s.recvfrom(65535)
        print(f"from {ip}:{port} {data.decode(errors='replace')}", flush=True)


def send(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    if args.iface_ip:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(args.iface_ip))
    gap = 1.0 / args.rate if args.rate else 0.0
    start = time.monotonic()
    for i in range(args.count):
        if gap:
            delay = start + i * gap - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        s.sendto(f"{args.payload}-{i}".encode(), (args.dst, args.port))
    print(f"sent {args.count}", flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("listen")
    lp.add_argument("port", type=int)
    lp.add_argument("--group")
    lp.add_argument("--iface-ip")
    sp = sub.add_parser("send")
    sp.add_argument("dst")
    sp.add_argument("port", type=int)
    sp.add_argument("payload")
    sp.add_argument("--count", type=int, default=1)
    sp.add_argument("--rate", type=float, default=0)
    sp.add_argument("--iface-ip")
    args = p.parse_args()
    {"listen": listen, "send": send}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

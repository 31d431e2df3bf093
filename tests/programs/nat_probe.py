#!/usr/bin/env python3
"""UDP tool for the NAT lab tests (tests/natlab/mod.rs, tests/e2e_natlab.rs).

Every message is one short ASCII datagram. Every client command uses ONE socket, bound to
0.0.0.0:PORT, for everything it sends and receives, so the mapping it learns from the
reflector is the mapping its other packets use.

  nat_probe.py reflect ADDR:PORT [ADDR:PORT ...]
      Binds every address, prints "ready", then answers, on the socket that got the request:
        "map"          -> "mapped IP:PORT" (the source it saw);
        "filter"       -> "from ADDR:PORT" sent from EVERY bound socket, the receiving one
                          first (like a STUN CHANGE-REQUEST: tells the client which sources
                          its NAT lets in after it talked to one of them);
        "register ID"  -> remembers ID at its source, answers "mapped IP:PORT";
        "lookup ID"    -> "peer ID IP:PORT", or "unknown ID" until ID has registered.
  nat_probe.py map --port P SERVER [SERVER ...]
      Asks every SERVER (IP:PORT) "map", in order; prints "mapped SERVER IP:PORT" per server,
      or "nomapping SERVER" when no answer came.
  nat_probe.py filter --port P SERVER [--wait S]
      Sends "filter" to SERVER three times, listens S seconds after the last one, and prints
      "from ADDR:PORT" once per source whose packets got in, sorted, then "done".
  nat_probe.py send --port P DST TEXT
      Sends one datagram TEXT to DST (IP:PORT) from port P; prints "sent".
  nat_probe.py punch --port P --reflector IP:PORT --me ID --peer ID [--tries N] [--interval S]
                     [--rendezvous S]
      Registers ID at the reflector, waits (at most --rendezvous seconds, default 20) until
      PEER has registered too (exit 3 if it never does), prints "peer IP:PORT",
      then sends "punch ID i" to the peer N times, S seconds apart, while listening (both ends
      do this at the same time: simultaneous open). A punch from PEER moves the target to the
      source it came from (a peer-reflexive address, as ICE does). Prints "got punch from
      IP:PORT" per new source and finally "received K" (punches from PEER that got in).
"""
import argparse
import socket
import sys
import time


def addr(text):
    host, port = text.rsplit(":", 1)
    return (host, int(port))


def show(a):
    return f"{a[0]}:{a[1]}"


def client_socket(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    return s


def ask(s, server, request, expect, tries=10, gap=0.2):
    """Sends `request` to `server` until a reply starting with `expect` comes back from it."""
    for _ in range(tries):
        s.sendto(request.encode(), server)
        deadline = time.monotonic() + gap
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data, src = s.recvfrom(2048)
            except socket.timeout:
                break
            text = data.decode(errors="replace")
            if src == server and text.startswith(expect):
                return text
    return None


def reflect(args):
    import selectors

    sel = selectors.DefaultSelector()
    socks = []
    for a in args.bind:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(addr(a))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    registered = {}
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            try:
                data, src = s.recvfrom(2048)
            except BlockingIOError:
                continue
            words = data.decode(errors="replace").split()
            if not words:
                continue
            if words[0] == "map":
                s.sendto(f"mapped {show(src)}".encode(), src)
            elif words[0] == "filter":
                for out in [s] + [o for o in socks if o is not s]:
                    out.sendto(f"from {show(out.getsockname())}".encode(), src)
            elif words[0] == "register" and len(words) == 2:
                registered[words[1]] = src
                s.sendto(f"mapped {show(src)}".encode(), src)
            elif words[0] == "lookup" and len(words) == 2:
                peer = registered.get(words[1])
                reply = f"peer {words[1]} {show(peer)}" if peer else f"unknown {words[1]}"
                s.sendto(reply.encode(), src)
            print(f"{show(src)} {' '.join(words)}", flush=True)


def mapping(args):
    s = client_socket(args.port)
    for server in args.servers:
        reply = ask(s, addr(server), "map", "mapped ")
        if reply:
            print(f"mapped {server} {reply.split()[1]}", flush=True)
        else:
            print(f"nomapping {server}", flush=True)


def filtering(args):
    s = client_socket(args.port)
    server = addr(args.server)
    seen = set()
    for i in range(3):
        s.sendto(b"filter", server)
        end = time.monotonic() + (args.wait if i == 2 else 0.2)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data, src = s.recvfrom(2048)
            except socket.timeout:
                break
            if data.startswith(b"from "):
                seen.add(src)
    for src in sorted(seen):
        print(f"from {show(src)}", flush=True)
    print("done", flush=True)


def send(args):
    s = client_socket(args.port)
    s.sendto(args.text.encode(), addr(args.dst))
    print("sent", flush=True)


def punch(args):
    s = client_socket(args.port)
    reflector = addr(args.reflector)
    reply = ask(s, reflector, f"register {args.me}", "mapped ", tries=50)
    if not reply:
        print("reflector did not answer", flush=True)
        sys.exit(2)
    print(f"mapped {reply.split()[1]}", flush=True)
    target = None
    deadline = time.monotonic() + args.rendezvous
    while target is None and time.monotonic() < deadline:
        reply = ask(s, reflector, f"lookup {args.peer}", "", tries=1, gap=0.1)
        if reply and reply.startswith("peer "):
            target = addr(reply.split()[2])
    if target is None:
        print(f"peer {args.peer} never registered", flush=True)
        sys.exit(3)
    print(f"peer {show(target)}", flush=True)
    received = 0
    sources = set()
    for i in range(args.tries):
        s.sendto(f"punch {args.me} {i}".encode(), target)
        end = time.monotonic() + args.interval
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data, src = s.recvfrom(2048)
            except socket.timeout:
                break
            words = data.decode(errors="replace").split()
            if len(words) == 3 and words[0] == "punch" and words[1] == args.peer:
                received += 1
                if src not in sources:
                    sources.add(src)
                    print(f"got punch from {show(src)}", flush=True)
                target = src
    print(f"received {received}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reflect")
    r.add_argument("bind", nargs="+")
    m = sub.add_parser("map")
    m.add_argument("--port", type=int, required=True)
    m.add_argument("servers", nargs="+")
    f = sub.add_parser("filter")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--wait", type=float, default=1.0)
    f.add_argument("server")
    d = sub.add_parser("send")
    d.add_argument("--port", type=int, required=True)
    d.add_argument("dst")
    d.add_argument("text")
    u = sub.add_parser("punch")
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--reflector", required=True)
    u.add_argument("--me", required=True)
    u.add_argument("--peer", required=True)
    u.add_argument("--tries", type=int, default=10)
    u.add_argument("--interval", type=float, default=0.3)
    u.add_argument("--rendezvous", type=float, default=20.0)
    args = p.parse_args()
    {"reflect": reflect, "map": mapping, "filter": filtering, "send": send, "punch": punch}[args.cmd](args)


if __name__ == "__main__":
    main()

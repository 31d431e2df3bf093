#!/usr/bin/env python3
"""A tiny "LAN game" to check that lobby discovery works across a party.

It behaves like an old LAN game: the host announces its lobby by UDP broadcast every second
and accepts players over TCP; a client listens for announcements, lists the lobbies it hears
and joins one.

  lan-lobby.py host NAME [--port 27015] [--announce-port 27016] [--to 255.255.255.255]
  lan-lobby.py client [--announce-port 27016] [--wait 5] [--player NAME]

Run the host on one member and the client on another (255.255.255.255 needs
`lanparty-lite join --broadcast-route` on the host's machine; `--to 10.66.255.255`, the party
subnet's broadcast address, works without it). The client prints

  lobby "NAME" hosted by IP:PORT
  joined "NAME": WELCOME player

and exits 0, or exits 1 when it heard no lobby within --wait seconds.
"""
import argparse
import socket
import sys
import threading
import time

MAGIC = "LPLOBBY1"


def host(args):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", args.port))
    server.listen(16)

    def announce():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        while True:
            s.sendto(f"{MAGIC} {args.port} {args.name}".encode(), (args.to, args.announce_port))
            time.sleep(1)

    threading.Thread(target=announce, daemon=True).start()
    print(f"hosting lobby {args.name!r} on TCP port {args.port}", flush=True)
    while True:
        conn, (ip, port) = server.accept()
        with conn:
            hello = conn.recv(256).decode(errors="replace").strip()
            player = hello.split(" ", 1)[1] if hello.startswith("HELLO ") else "?"
            conn.sendall(f"WELCOME {player}\n".encode())
            print(f"{player} joined from {ip}:{port}", flush=True)


def client(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", args.announce_port))
    deadline = time.monotonic() + args.wait
    lobbies = {}
    while time.monotonic() < deadline and not lobbies:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, (ip, _) = s.recvfrom(1500)
        except socket.timeout:
            break
        parts = data.decode(errors="replace").split(" ", 2)
        if len(parts) == 3 and parts[0] == MAGIC and parts[1].isdigit():
            lobbies[(ip, int(parts[1]))] = parts[2]
    if not lobbies:
        print("no lobby heard", flush=True)
        return 1
    for (ip, port), name in lobbies.items():
        print(f"lobby {name!r} hosted by {ip}:{port}", flush=True)
    (ip, port), name = next(iter(lobbies.items()))
    with socket.create_connection((ip, port), timeout=5) as conn:
        conn.sendall(f"HELLO {args.player}\n".encode())
        reply = conn.recv(256).decode(errors="replace").strip()
    print(f"joined {name!r}: {reply}", flush=True)
    return 0 if reply == f"WELCOME {args.player}" else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    hp = sub.add_parser("host")
    hp.add_argument("name")
    hp.add_argument("--port", type=int, default=27015)
    hp.add_argument("--announce-port", type=int, default=27016)
    hp.add_argument("--to", default="255.255.255.255")
    cp = sub.add_parser("client")
    cp.add_argument("--announce-port", type=int, default=27016)
    cp.add_argument("--wait", type=float, default=5)
    cp.add_argument("--player", default="player")
    args = p.parse_args()
    return host(args) if args.cmd == "host" else client(args)


if __name__ == "__main__":
    sys.exit(main())

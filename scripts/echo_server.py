#!/usr/bin/env python3
"""A pod's workload for the demo and the tests: answers with its own name.

TCP: a minimal HTTP/1.0 server; the body is "<name>:<port> <client-ip>\n".
UDP: replies "<name>:<port> <client-ip>\n" to every datagram.
Usage: echo_server.py NAME PORT[,PORT...] [--udp PORT[,PORT...]] [--bind ADDR]
Runs until killed; serves only the addresses of the namespace it runs in.
"""
import argparse
import socket
import socketserver
import threading


def peer(addr):
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


def serve_tcp(name, port, family, bind):
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.settimeout(5)
            try:
                self.request.recv(4096)
            except OSError:
                pass
            body = f"{name}:{port} {peer(self.client_address[0])}\n".encode()
            head = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            head += f"Content-Length: {len(body)}\r\n\r\n".encode()
            try:
                self.request.sendall(head + body)
            except OSError:
                pass

    class Server(socketserver.ThreadingTCPServer):
        address_family = family
        allow_reuse_address = True
        daemon_threads = True

    srv = Server((bind, port), Handler)
    srv.serve_forever()


def serve_udp(name, port, family, bind):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    while True:
        _, addr = sock.recvfrom(2048)
        sock.sendto(f"{name}:{port} {peer(addr[0])}\n".encode(), addr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("ports")
    ap.add_argument("--udp", default="")
    ap.add_argument("--bind", default="::")
    a = ap.parse_args()
    family = socket.AF_INET6 if ":" in a.bind else socket.AF_INET
    threads = []
    for p in filter(None, a.ports.split(",")):
        threads.append(threading.Thread(target=serve_tcp, args=(a.name, int(p), family, a.bind), daemon=True))
    for p in filter(None, a.udp.split(",")):
        threads.append(threading.Thread(target=serve_udp, args=(a.name, int(p), family, a.bind), daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()

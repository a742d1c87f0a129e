"""A threaded HTTP/1.1 server for termscope's scenario tests (keep-alive, Content-Length).

usage: http_app.py PORT MODE
  /         answers at once
  /slow?s=N sleeps N seconds, then answers; prints "start <client port>" first
modes, i.e. what SIGTERM does:
  drain           wait until no request is in flight, then exit (a graceful app)
  stubborn        print "term" and keep serving (an app that does not stop on SIGTERM)
  close-listener  close the listening socket at once, linger 1 s, exit (the app stops
                  accepting while traffic may still arrive)
Prints "listening" once it accepts connections.
"""
import os
import signal
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

port, mode = int(sys.argv[1]), sys.argv[2]


def say(*words):
    """One line to stdout in one write(2): a pipe write that small is atomic, so lines from
    concurrent threads never interleave (print writes each word and the newline apart)."""
    os.write(1, (" ".join(str(w) for w in words) + "\n").encode())

busy = 0
lock = threading.Lock()


def answer(conn, body, close):
    head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
    if close:
        head += "Connection: close\r\n"
    conn.sendall(head.encode() + b"\r\n" + body)


def serve(conn, peer):
    global busy
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            target = lines[0].split()[1]
            close = any(l.lower() == "connection: close" for l in lines[1:])
            url = urlsplit(target)
            with lock:
                busy += 1
            try:
                if url.path == "/slow":
                    seconds = float(parse_qs(url.query).get("s", ["2"])[0])
                    say("start", peer[1])
                    time.sleep(seconds)
                    answer(conn, b"slow done\n", close)
                else:
                    answer(conn, b"ok\n", close)
            finally:
                with lock:
                    busy -= 1
            if close:
                return
    except OSError:
        pass
    finally:
        conn.close()


listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(64)


def on_term(signum, frame):
    say("term")
    if mode == "drain":
        while busy:
            time.sleep(0.05)
        sys.exit(0)
    elif mode == "close-listener":
        listener.close()
        time.sleep(1)
        sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
say("listening")
while True:
    try:
        conn, peer = listener.accept()
    except OSError:
        if listener.fileno() == -1:
            time.sleep(3600)
        raise
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()

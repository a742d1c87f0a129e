"""A TCP server for termscope's kernel tests: accepts one connection and ends it one way.

usage: tcp_server.py FAMILY(4|6) HOST PORT MODE
modes:
  echo          read a line, answer "pong", shut down writing, wait for the peer's FIN, close
                (an orderly FIN exchange: nothing cut)
  close-unread  wait until the peer's data arrives, close without reading it (kernel sends RST)
  linger0       read the peer's request, set SO_LINGER {on, 0} and close (kernel sends RST)
  hold          keep the connection open until killed (the kernel closes it at exit)
  expect-reset  wait for the peer's RST and report it
Prints "listening", "accepted <peer port>" and "done <result>" lines on stdout.
"""
import select
import socket
import struct
import sys
import time

family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
host, port, mode = sys.argv[2], int(sys.argv[3]), sys.argv[4]

listener = socket.socket(family, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((host, port))
listener.listen(16)
print("listening", flush=True)
conn, peer = listener.accept()
print("accepted", peer[1], flush=True)

result = "ok"
if mode == "echo":
    conn.recv(1024)
    conn.sendall(b"pong\n")
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(1024):
        pass
    conn.close()
elif mode == "close-unread":
    select.select([conn], [], [], 10)
    conn.close()
elif mode == "linger0":
    conn.recv(1024)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
elif mode == "hold":
    while True:
        time.sleep(60)
elif mode == "expect-reset":
    try:
        conn.recv(1024)
        result = "eof"
    except ConnectionResetError:
        result = "reset"
    conn.close()
else:
    sys.exit("unknown mode " + mode)
listener.close()
print("done", result, flush=True)

"""A WSGI app for termscope's gunicorn and uWSGI scenarios.

  /         answers at once
  /slow?s=N sleeps N seconds, then answers; first marks "start <client port> <pid>", so a
            test knows the request is in flight
Every answer has a Content-Length. Marks go to stdout, and are appended to the file named by
the MARKS environment variable when set (uWSGI sends the app's stdout to its log).
"""
import os
import time
from urllib.parse import parse_qs


def mark(*words):
    line = " ".join(str(w) for w in words)
    # One write(2) per line: a pipe write that small is atomic, so the marks of concurrent
    # workers and threads never interleave (print writes the line and its newline apart).
    os.write(1, (line + "\n").encode())
    path = os.environ.get("MARKS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/slow":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        seconds = float(query.get("s", ["2"])[0])
        mark("start", environ.get("REMOTE_PORT", "?"), os.getpid())
        time.sleep(seconds)
        body = b"slow done\n"
    else:
        body = b"ok\n"
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]


mark("app loaded", os.getpid())

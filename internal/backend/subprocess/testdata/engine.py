#!/usr/bin/env python3
"""A minimal engine honouring the bap-engine engine contract, stdlib only.

Used by the subprocess backend's tests to show that a non-Go engine runs:
GET /health without a key; every other route needs X-Engine-Key whose
sha256 hex equals ENGINE_KEY_HASH; a counter kept in SQLITE_DB_PATH;
SIGTERM finishes in-flight requests and exits.
"""
import hashlib
import hmac
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8000"))
HOST = os.environ.get("ENGINE_LISTEN_HOST", "")
KEY_HASH = os.environ["ENGINE_KEY_HASH"].lower()
DB_PATH = os.environ.get("SQLITE_DB_PATH", "/data/brain.sqlite")
STARTED = time.time()
LOCK = threading.Lock()


def open_brain():
    os.makedirs(os.path.dirname(DB_PATH) or ".", exist_ok=True)
    db = sqlite3.connect(DB_PATH, check_same_thread=False)
    db.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)")
    db.execute("INSERT OR IGNORE INTO counter (id, value) VALUES (1, 0)")
    db.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY AUTOINCREMENT, "
               "input TEXT NOT NULL, output TEXT NOT NULL, created_at TEXT NOT NULL)")
    db.commit()
    return db


BRAIN = open_brain()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def send_json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, status, code, message):
        self.send_json(status, {"error": {"code": code, "message": message}})

    def authorized(self):
        key = self.headers.get("X-Engine-Key", "")
        if not key:
            return False
        return hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), KEY_HASH)

    def do_GET(self):
        if self.path == "/health":
            self.send_json(200, {"status": "ok", "version": "python-test", "uptime_s": time.time() - STARTED})
            return
        if not self.authorized():
            self.send_error_json(401, "INVALID_ENGINE_KEY", "missing or invalid X-Engine-Key")
            return
        if self.path == "/brain":
            with LOCK:
                counter = BRAIN.execute("SELECT value FROM counter WHERE id = 1").fetchone()[0]
            self.send_json(200, {"counter": counter})
            return
        self.send_error_json(404, "NOT_FOUND", "no such route")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not self.authorized():
            self.send_error_json(401, "INVALID_ENGINE_KEY", "missing or invalid X-Engine-Key")
            return
        if self.path != "/execute":
            self.send_error_json(404, "NOT_FOUND", "no such route")
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        text = body.get("input") if isinstance(body, dict) else None
        if not isinstance(text, str):
            self.send_error_json(422, "VALIDATION_ERROR", "input is required")
            return
        with LOCK:
            BRAIN.execute("UPDATE counter SET value = value + 1 WHERE id = 1")
            counter = BRAIN.execute("SELECT value FROM counter WHERE id = 1").fetchone()[0]
            output = "Noted #%d: %s" % (counter, text)
            BRAIN.execute("INSERT INTO notes (input, output, created_at) VALUES (?, ?, ?)",
                          (text, output, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
            BRAIN.commit()
        self.send_json(200, {"output": output, "counter": counter})


def main():
    server = ThreadingHTTPServer((HOST, PORT), Handler)

    def on_term(signum, frame):
        # shutdown() waits for serve_forever, so it cannot run in the handler.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, on_term)
    sys.stderr.write("python engine ready on %s:%d\n" % (HOST, PORT))
    server.serve_forever()
    server.server_close()
    with LOCK:
        BRAIN.close()


if __name__ == "__main__":
    main()

"""A misbehaving OpenAI-compatible server, run as its own process: ``python -m tests.daemon.upstream_stub PORT``.

``model: "broken"`` answers 500; ``model: "slow"`` answers after 5 s; anything else a tiny completion.
Every request is appended to the file named by ``STUB_LOG`` (method, path, Authorization present or not).
"""

from __future__ import annotations

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        with open(os.environ["STUB_LOG"], "a") as log:
            log.write(json.dumps({"path": self.path, "model": body.get("model"),
                                  "auth": "authorization" in {k.lower() for k in self.headers}}) + "\n")
        if body.get("model") == "broken":
            self._send(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
            return
        if body.get("model") == "slow":
            time.sleep(5)
        self._send(200, {"id": "stub", "object": "chat.completion", "created": 0, "model": body.get("model"),
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except BrokenPipeError:  # the gateway gave up waiting (the timeout test)
            pass

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()

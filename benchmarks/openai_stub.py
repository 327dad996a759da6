"""A minimal OpenAI-compatible server, run as its own process: ``python -m benchmarks.openai_stub PORT``.

Used by the gateway's tests (failure handling) and its latency benchmark (an upstream that answers at once).

``model: "broken"`` answers 500; ``model: "slow"`` answers after 5 s; anything else a tiny completion.
Every request is appended to the file named by ``STUB_LOG`` (when set) (method, path, Authorization present or not).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a production upstream

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        if os.environ.get("STUB_LOG"):
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

    def _send(self, status: int, payload: dict[str, object]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the gateway gave up waiting (the timeout test)
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()

"""The test cluster's own helpers, without starting a cluster."""

from __future__ import annotations

import http.server
import json
import threading

from standalone_cluster import _free_port, master_state


def test_master_state_waits_for_the_json_page_of_a_starting_master():
    """A starting master's UI answers ``/json/`` with its HTML overview until the JSON handler is attached."""
    pages = [b"<!DOCTYPE html><html><body>Spark Master</body></html>", json.dumps({"workers": []}).encode()]

    class Starting(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = pages.pop(0) if len(pages) > 1 else pages[0]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    closed = f"http://127.0.0.1:{_free_port()}"
    assert master_state(closed) is None  # nothing listens yet
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Starting) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            assert master_state(url) is None  # the HTML page: not ready
            assert master_state(url) == {"workers": []}
        finally:
            server.shutdown()

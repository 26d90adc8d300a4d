"""Helpers of the rating page tests: generation files in inference.py's format, and the page's server as a real
subprocess on a free port of 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = [
    ("Name three primary colors.", ""),
    ("What is the capital of France?", ""),
    ("Give a synonym for the word below.", "happy"),
    ("Sort these numbers from small to large.", "7, 2, 9"),
]
GOOD = ["Red, blue and yellow.", "Paris is the capital of France.", "Joyful.", "2, 7, 9"]
BAD = ["Green, maybe.", "London.", "Sad.", "9, 7, 2"]


def write_generations(path: Path, predictions: list[str], adapter: str) -> Path:
    rows = [{"id": index, "instruction": instruction, "input": context, "reference": GOOD[index], "prediction": pred,
             "settings": {"top_k": None, "top_p": None, "temperature": None, "num_beams": 1, "max_new_tokens": 64,
                          "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "do_sample": False, "seed": 42},
             "base_model": "tiny-llama", "adapter": adapter, "precision": {"quantization": "none"},
             "new_tokens": len(pred.split()), "seconds": 0.05}
            for index, ((instruction, context), pred) in enumerate(zip(PROMPTS, predictions))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


class Server:
    """`python -m alpaca_qlora.rating ARGS --port 0`, its URL read from the line it prints."""

    def __init__(self, args: list[str], log_dir: Path, env: dict | None = None, timeout: float = 120):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = log_dir / "server.out", log_dir / "server.err"
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "alpaca_qlora.rating", *args, "--port", "0"],
                                            cwd=ROOT, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        self.url = self._wait_for_url(timeout)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"rating page: (http://[^/\s]+)", self.out_path.read_text())
            if match:
                try:
                    urllib.request.urlopen(match.group(1) + "/static/style.css", timeout=5).read()
                    return match.group(1)
                except (urllib.error.URLError, ConnectionError):
                    pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}): {self.err_path.read_text()}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start in {timeout} s: {self.err_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine or the process dies."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def request(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None,
            timeout: float = 120):
    """(status, headers, body) of one HTTP request; an HTTP error status is returned, not raised."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def post_json(url: str, body, headers: dict | None = None, timeout: float = 120):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(url, data, {"Content-Type": "application/json", **(headers or {})}, timeout=timeout)


def address(url: str) -> tuple[str, int]:
    """('127.0.0.1', port) of http://127.0.0.1:port."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def raw_post(url: str, path: str, body: bytes, content_type: str) -> bytes:
    """The bytes of one POST as a socket sends them (HTTP/1.1, the connection closed after the answer)."""
    host, port = address(url)
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def connect(url: str, timeout: float = 10) -> socket.socket:
    return socket.create_connection(address(url), timeout=timeout)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]

"""A real nginx (Debian nginx-light, installed by scripts/install-system-deps.sh) for the lifecycle tests.

One foreground nginx per instance (``master_process off``, ``daemon off``),
its prefix, logs and temp paths in a test's tmp dir, listening on 127.0.0.1.
Used for the keep-alive idle timeout (``keepalive_timeout``) and TLS session
resumption (tickets on or off, no session cache).
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """``server_extra`` goes into the server block; with ``cert``/``key`` it listens with TLS."""

    def __init__(self, tmp: Path, *, keepalive_timeout: str = "75s", server_extra: str = "",
                 cert: str | None = None, key: str | None = None) -> None:
        self.dir = tmp
        self.keepalive_timeout = keepalive_timeout
        self.server_extra = server_extra
        self.cert, self.key = cert, key
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.cert else 'http'}://127.0.0.1:{self.port}/"

    def _config(self) -> str:
        tls = (f"ssl_certificate {self.cert};\n        ssl_certificate_key {self.key};\n"
               "        ssl_protocols TLSv1.2 TLSv1.3;") if self.cert else ""
        return f"""
daemon off;
master_process off;
user root;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    keepalive_timeout {self.keepalive_timeout};
    server {{
        listen 127.0.0.1:{self.port}{' ssl' if self.cert else ''};
        server_name localhost;
        {tls}
        {self.server_extra}
        location / {{ return 200 "hello from nginx\\n"; }}
    }}
}}
"""

    def __enter__(self) -> Nginx:
        for _ in range(5):  # a freed port can be taken again before nginx binds it
            self.port = _free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(self._config())
            self.proc = subprocess.Popen([NGINX, "-p", str(self.dir), "-c", str(conf)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return self
                except OSError:
                    time.sleep(0.05)
            err = self._stop()
            if "Address already in use" not in err:
                raise RuntimeError(f"nginx did not start: {err}")
        raise RuntimeError("nginx: no free port after 5 tries")

    def _stop(self) -> str:
        if self.proc is None:
            return ""
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        return err + (self.dir / "error.log").read_text(errors="replace") if (self.dir / "error.log").exists() else err

    def __exit__(self, *exc: object) -> None:
        self._stop()

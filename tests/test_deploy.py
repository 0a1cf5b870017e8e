"""deploy/: the nginx site file and the systemd unit, checked with the real programs.

There is no systemd as PID 1 here: the unit is checked with systemd-analyze and
its ExecStart line is run by hand, with the documented paths substituted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_port
from tests.sse_client import SSEConnection


def nginx_binary() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(path).exists():
        pytest.fail("nginx is not installed: run tests/run.sh, which installs it")
    return path


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_nginx_site_passes_nginx_t(project, tmp_path):
    slug = project.path.name
    site = (project.path / "deploy" / "nginx" / f"{slug}.conf").read_text()
    cert, key = self_signed(tmp_path)
    # Only what deploy/README.md has the user provide: the certificate files.
    site = re.sub(r"ssl_certificate .*;", f"ssl_certificate {cert};", site)
    site = re.sub(r"ssl_certificate_key .*;", f"ssl_certificate_key {key};", site)
    assert "listen 443 ssl http2;" in site, "1.18-compatible http2 syntax"
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include /etc/nginx/mime.types;\n  include {tmp_path}/site.conf;\n}}\n"
    )
    result = subprocess.run(
        [nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    upstreams = re.findall(r"server 127\.0\.0\.1:(\d+)", site)
    assert upstreams == ["9095", "9096"], "one upstream server per instance"


def unit_with_paths(project, tmp_path) -> str:
    slug = project.path.name
    unit = (project.path / "deploy" / "systemd" / f"{slug}@.service").read_text()
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in project.env().items() if k.startswith(("DJANGO_", "SSE_"))))
    return (
        unit.replace(f"/srv/{slug}/venv", str(project.venv))
        .replace(f"/srv/{slug}/app", str(project.path))
        .replace(f"/etc/{slug}/env", str(env_file))
    )


def test_systemd_unit_verifies(project, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    slug = project.path.name
    unit = tmp_path / f"{slug}@9095.service"
    unit.write_text(unit_with_paths(project, tmp_path))
    (tmp_path / f"{slug}.target").write_text((project.path / "deploy" / "systemd" / f"{slug}.target").read_text())
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    problems = [line for line in result.stderr.splitlines() if slug in line and "Unit configured to use" not in line]
    assert result.returncode == 0 and not problems, result.stderr
    text = unit.read_text()
    for needed in ["LimitNOFILE=65536", "Restart=on-failure", "EnvironmentFile=", "RuntimeDirectory=" + slug + "/%i"]:
        assert needed in text


def test_the_units_execstart_serves_a_stream(project, redis_server, tmp_path):
    unit = unit_with_paths(project, tmp_path)
    execstart = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", unit, re.M).group(1).replace("\\\n", " ")
    port = free_port()
    argv = execstart.replace("%i", str(port)).split()
    env = project.env(REDIS_URL=redis_server.url)
    log = tmp_path / "daphne.log"
    proc = subprocess.Popen(argv, cwd=project.path, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        client = SSEConnection("127.0.0.1", port, "/sse/unit/", {"X-Forwarded-For": "203.0.113.9"})
        assert client.wait_status() == 200
        result = project.manage("send_event", "unit", "--data", '{"via": "unit"}', env=env)
        (event,) = client.wait_events(1)
        assert event.id == result.stdout.strip()
        client.close()
    finally:
        proc.terminate()
        proc.wait(15)
    assert "Traceback" not in log.read_text()

"""deploy/: the nginx site file and the systemd unit, checked with the real programs.

There is no systemd as PID 1 here: the unit is checked with systemd-analyze and
its ExecStart line is run by hand, with the documented paths substituted.
"""

from __future__ import annotations

import re
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Daphne, Project, bake, free_port, wait_for_port
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


SOCKETS = ["tcp", "unix"]


@pytest.fixture
def baked(project, tmp_path):
    """A fresh bake of the session's mode with other deploy answers, using its venv."""

    def make(**context: str) -> Project:
        path = bake(tmp_path / "bake", sse_mode=project.mode, project_name="Deploy Check", **context)
        return Project(path, project.mode, project.venv)

    return make


def site_file(project: Project) -> str:
    return (project.path / "deploy" / "nginx" / f"{project.path.name}.conf").read_text()


@pytest.mark.parametrize("socket_kind", SOCKETS)
def test_nginx_site_passes_nginx_t(baked, tmp_path, socket_kind):
    project = baked(daphne_socket=socket_kind)
    slug = project.path.name
    site = site_file(project)
    cert, key = self_signed(tmp_path)
    # Only what deploy/README.md has the user provide: the certificate files.
    site = re.sub(r"ssl_certificate .*;", f"ssl_certificate {cert};", site)
    site = re.sub(r"ssl_certificate_key .*;", f"ssl_certificate_key {key};", site)
    assert "listen 443 ssl http2;" in site, "1.18-compatible http2 syntax"
    site = site.replace("/var/log/nginx/", f"{tmp_path}/")
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include /etc/nginx/mime.types;\n  include {tmp_path}/site.conf;\n}}\n"
    )
    result = subprocess.run(
        [nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    upstreams = re.findall(r"^\s*server (\S+) max_fails", site, re.M)
    if socket_kind == "tcp":
        assert upstreams == ["127.0.0.1:9095", "127.0.0.1:9096"], "one upstream server per instance"
    else:
        assert upstreams == [f"unix:/run/{slug}/1/daphne.sock", f"unix:/run/{slug}/2/daphne.sock"]


def unit_with_paths(project: Project, tmp_path: Path) -> str:
    """The unit with the guide's folders moved to where this test put them."""
    slug = project.path.name
    unit = (project.path / "deploy" / "systemd" / f"{slug}@.service").read_text()
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in project.env().items() if k.startswith(("DJANGO_", "SSE_"))))
    return (
        unit.replace(f"/srv/{slug}/venv", str(project.venv))
        .replace(f"/srv/{slug}/app", str(project.path))
        .replace(f"/etc/{slug}/env", str(env_file))
        .replace(f"/run/{slug}/", f"{tmp_path}/run/{slug}/")
    )


def write_units(project: Project, tmp_path: Path, instance: str) -> Path:
    slug = project.path.name
    unit = tmp_path / f"{slug}@{instance}.service"
    unit.write_text(unit_with_paths(project, tmp_path))
    (tmp_path / f"{slug}.target").write_text((project.path / "deploy" / "systemd" / f"{slug}.target").read_text())
    return unit


@pytest.mark.parametrize("socket_kind", SOCKETS)
def test_systemd_unit_verifies_and_exposure_is_low(baked, tmp_path, socket_kind):
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    project = baked(daphne_socket=socket_kind)
    slug = project.path.name
    unit = write_units(project, tmp_path, "1" if socket_kind == "unix" else "9095")
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    problems = [line for line in result.stderr.splitlines() if slug in line]
    assert result.returncode == 0 and not problems, result.stderr
    text = unit.read_text()
    for needed in [
        "LimitNOFILE=65536",
        "LogRateLimitBurst=100000",  # a reconnect storm's access lines, past journald's default
        "Restart=on-failure",
        "EnvironmentFile=",
        f"StateDirectory={slug}",
    ]:
        assert needed in text
    if socket_kind == "unix":
        assert f"RuntimeDirectory={slug}/%i" in text, "one runtime folder per instance"
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True, cwd=tmp_path
    )
    exposure = float(re.search(r"Overall exposure level for .*: (\d+\.\d+)", security.stdout).group(1))
    print(f"systemd-analyze security ({socket_kind}): {exposure}")
    assert exposure <= 2.0, security.stdout


@pytest.mark.parametrize("socket_kind", SOCKETS)
def test_the_units_execstart_serves_a_stream(baked, redis_server, tmp_path, socket_kind):
    project = baked(daphne_socket=socket_kind)
    slug = project.path.name
    unit = unit_with_paths(project, tmp_path)
    execstart = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", unit, re.M).group(1).replace("\\\n", " ")
    if socket_kind == "unix":
        instance = "1"
        (tmp_path / "run" / slug / instance).mkdir(parents=True)  # systemd's RuntimeDirectory=
        sock = tmp_path / "run" / slug / instance / "daphne.sock"
    else:
        instance = str(free_port())
    argv = execstart.replace("%i", instance).split()
    env = project.env(REDIS_URL=redis_server.url)
    log = tmp_path / "daphne.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=project.path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        if socket_kind == "unix":
            deadline = time.monotonic() + 30
            while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert stat.S_IMODE(sock.stat().st_mode) == 0o660, "socket mode 660"
            client = SSEConnection("localhost", 0, "/sse/unit/", {"X-Forwarded-For": "203.0.113.9"}, unix=str(sock))
        else:
            wait_for_port(int(instance), proc)
            client = SSEConnection("127.0.0.1", int(instance), "/sse/unit/", {"X-Forwarded-For": "203.0.113.9"})
        assert client.wait_status() == 200
        # Started on uvloop: its event loop's extension is loaded in the serving process.
        assert "/uvloop/loop." in Path(f"/proc/{proc.pid}/maps").read_text(), execstart
        result = project.manage("send_event", "unit", "--data", '{"via": "unit"}', env=env)
        (event,) = client.wait_events(1)
        assert event.id == result.stdout.strip()
        client.close()
    finally:
        proc.terminate()
        proc.wait(15)
    output = log.read_text()
    assert "Traceback" not in output
    assert proc.returncode == 0, output  # SIGTERM, as systemd stops it: a clean exit
    # One line when it came up, for journald: where it listens, with what, within which limits.
    listening = f"unix:{sock}" if socket_kind == "unix" else f"tcp:127.0.0.1:{instance}"
    expected = (
        rf"INFO sse serving listening={re.escape(listening)} mode={project.mode} "
        rf"broker={re.escape(redis_server.url)} max_streams=\d+ open_files=\d+ debug=off$"
    )
    assert len(re.findall(expected, output, re.M)) == 1, output
    assert len(re.findall(r" serving listening=", output)) == 1, output


def guide(project: Project) -> str:
    return (project.path / "deploy" / "README.md").read_text()


def test_the_guide_installs_every_command_it_uses(baked):
    text = guide(baked())
    blocks = "\n".join(re.findall(r"```sh\n(.*?)```", text, re.S))
    packages = re.search(r"^apt-get install -y (.*)$", blocks, re.M).group(1).split()
    # Commands that Debian's minimal images lack, and the package that brings each.
    for command, package in {"sudo": "sudo", "openssl": "openssl", "rsync": "rsync", "certbot": "certbot"}.items():
        if re.search(rf"(^|[;&|(] *){command} ", blocks, re.M):
            assert package in packages, f"the guide runs {command} but does not install {package}"
    assert "--exclude .env" in blocks, "a copy of the project leaves the development .env behind"


def test_the_guides_tls_steps_work_in_their_order(baked, tmp_path):
    """Step 4 as written: self-signed first (nginx -t passes), then certbot's files linked in."""
    project = baked()
    slug, domain = project.path.name, "example.com"
    text = guide(project)
    section = text[text.index("## 4. nginx and TLS") : text.index("### Metrics and logs")]
    lines = [
        " ".join(line.split())
        for line in "\n".join(re.findall(r"```sh\n(.*?)```", section, re.S)).replace("\\\n", " ").splitlines()
    ]
    lines = [line for line in lines if line]
    site = site_file(project)
    acme_root = re.search(r"location /\.well-known/acme-challenge/ \{\s*root (\S+);", site).group(1)
    root = tmp_path / "root"
    moved = {  # the machine's folders, moved under root
        "/etc/nginx/": f"{root}/etc/nginx/",
        "/etc/letsencrypt/": f"{root}/etc/letsencrypt/",
        "/var/www/": f"{root}/var/www/",
        "/var/log/nginx/": f"{root}/",
    }

    def move(text: str) -> str:
        for old, new in moved.items():
            text = text.replace(old, new)
        return text

    for folder in ("etc/nginx/sites-available", "etc/nginx/sites-enabled"):
        (root / folder).mkdir(parents=True)

    def nginx_t() -> subprocess.CompletedProcess:
        enabled = root / "etc/nginx/sites-enabled" / f"{slug}.conf"
        (tmp_path / "site.conf").write_text(move(enabled.read_text()))
        (tmp_path / "nginx.conf").write_text(
            f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
            f"http {{\n  access_log off;\n  include /etc/nginx/mime.types;\n  include {tmp_path}/site.conf;\n}}\n"
        )
        return subprocess.run(
            [nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
            capture_output=True,
            text=True,
        )

    steps = []
    for line in lines:
        command = line.split("#")[0].strip()
        if command.startswith("nginx -t"):
            result = nginx_t()
            assert result.returncode == 0, f"{line}\n{result.stderr}"
            steps.append("nginx -t")
        elif command.startswith(("curl", "systemctl")):
            continue
        elif command.startswith("certbot"):
            # certbot answers through the running site: its webroot is the site's challenge folder.
            assert f"--webroot -w {acme_root} " in command and f"-d {domain}" in command, command
            assert "--deploy-hook" in command and "reload nginx" in command, "renewals reach nginx"
            live = root / "etc/letsencrypt/live" / domain
            live.mkdir(parents=True)
            cert, key = self_signed(live)
            cert.rename(live / "fullchain.pem")
            key.rename(live / "privkey.pem")
            steps.append("certbot")
        else:
            command = move(command).replace(
                f"deploy/nginx/{slug}.conf", str(project.path / f"deploy/nginx/{slug}.conf")
            )
            subprocess.run(["bash", "-ec", command], check=True, cwd=tmp_path, capture_output=True)
            steps.append(command.split()[0])
            if command.startswith("openssl"):
                assert (root / "etc/nginx/ssl" / slug / "fullchain.pem").is_file()
    assert steps.index("openssl") < steps.index("nginx -t") < steps.index("certbot"), steps
    assert steps[-1] == "nginx -t" and steps.count("nginx -t") == 2, steps
    # The site now reads certbot's files through the links.
    for name in ("fullchain.pem", "privkey.pem"):
        link = root / "etc/nginx/ssl" / slug / name
        assert link.is_symlink() and link.resolve() == (root / "etc/letsencrypt/live" / domain / name).resolve()
    # And the order matters: without the self-signed pair nginx -t fails, as the guide says.
    for name in ("fullchain.pem", "privkey.pem"):
        (root / "etc/nginx/ssl" / slug / name).unlink()
    assert nginx_t().returncode != 0


class Nginx:
    """The generated site file under a real nginx, with test certificates and ports."""

    def __init__(self, site: str, workdir: Path) -> None:
        self.http, self.https = free_port(), free_port()
        cert, key = self_signed(workdir)
        # What deploy/README.md has the user provide (certificates), and the listen ports.
        site = re.sub(r"ssl_certificate .*;", f"ssl_certificate {cert};", site)
        site = re.sub(r"ssl_certificate_key .*;", f"ssl_certificate_key {key};", site)
        site = re.sub(r"listen (\[::\]:)?80;", lambda m: f"listen {m.group(1) or ''}{self.http};", site)
        site = re.sub(r"listen (\[::\]:)?443 ", lambda m: f"listen {m.group(1) or ''}{self.https} ", site)
        # The site's own (masked) access log, where the tests read it.
        site = re.sub(r"/var/log/nginx/\S+\.access\.log", f"{workdir}/access.log", site)
        self.workdir = workdir
        (workdir / "site.conf").write_text(site)
        kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        temp = "".join(f"  {kind}_temp_path {workdir}/{kind};\n" for kind in kinds)
        (workdir / "nginx.conf").write_text(
            f"user root;\ndaemon off;\nworker_processes 1;\npid {workdir}/nginx.pid;\nerror_log {workdir}/error.log;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n  include /etc/nginx/mime.types;\n  access_log {workdir}/access.log;\n{temp}"
            f"  include {workdir}/site.conf;\n}}\n"
        )
        self.proc = subprocess.Popen(
            [nginx_binary(), "-p", str(workdir), "-c", str(workdir / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.https, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_pair() -> int:
    """A port that is free, and the next one too: for two TCP instances."""
    first = free_port()
    while not (port_free(first) and port_free(first + 1)):
        first = free_port()
    return first


def serve_behind_nginx(
    project: Project, redis_url: str, tmp_path: Path, **env: str
) -> tuple[list[Daphne], Nginx, dict[str, str]]:
    """The generated site under nginx, in front of Daphne instances where the site expects them."""
    slug = project.path.name
    project.manage("collectstatic", "--noinput", "-v0")
    settings = project.env(REDIS_URL=redis_url, DJANGO_SECURE_SSL_REDIRECT="1", **env)
    site = site_file(project).replace(f"/srv/{slug}/app/", f"{project.path}/")  # the documented install folder
    daphnes = []
    for n, upstream in enumerate(re.findall(r"^\s*server (\S+) max_fails", site, re.M), start=1):
        log = tmp_path / f"daphne-{n}.log"
        if upstream.startswith("unix:"):
            sock = tmp_path / "run" / slug / str(n) / "daphne.sock"
            sock.parent.mkdir(parents=True)
            site = site.replace(upstream, f"unix:{sock}")
            daphnes.append(Daphne(project, None, settings, log, unix=sock))
        else:
            daphnes.append(Daphne(project, int(upstream.rsplit(":", 1)[1]), settings, log))
    (tmp_path / "nginx").mkdir()
    return daphnes, Nginx(site, tmp_path / "nginx"), settings


@pytest.fixture(params=SOCKETS)
def behind_nginx(request, baked, redis_server, tmp_path):
    """Two Daphne instances where the generated files put them, and nginx in front."""
    if request.param == "unix":
        project = baked(daphne_socket="unix")
    else:
        project = baked(daphne_port=str(free_port_pair()))
    daphnes, nginx, _env = serve_behind_nginx(project, redis_server.url, tmp_path)
    yield project, daphnes, nginx
    nginx.stop()
    for daphne in daphnes:
        daphne.stop()
        assert "Traceback" not in daphne.output(), daphne.output()


PUBLISH_AND_TIME = """
import sys, time, django
django.setup()
from sse import publish
event_id = publish(sys.argv[1], "n", {"small": True})
print(event_id, time.time())
"""


def test_events_arrive_unbuffered_through_nginx(behind_nginx, redis_server):
    project, daphnes, nginx = behind_nginx
    client = SSEConnection("127.0.0.1", nginx.https, "/sse/through-nginx/", {"Accept-Encoding": "gzip"}, tls=True)
    assert client.wait_status() == 200
    assert "content-encoding" not in client.response_headers, "no gzip on the stream"
    assert client.wait(lambda c: c.parser.retry is not None, 5), "the first chunk passes nginx at once"
    delays = []
    for _ in range(3):
        out = project.run("-c", PUBLISH_AND_TIME, "through-nginx", env=project.env(REDIS_URL=redis_server.url))
        event_id, published = out.stdout.split()
        client.wait_events(len(delays) + 1)
        assert client.events[-1].id == event_id
        delays.append(client.arrivals[-1] - float(published))
    client.close()
    kind = "unix" if daphnes[0].unix else "tcp"
    report = f"publish() returned -> event parsed, through nginx ({project.mode}, {kind}): "
    report += ", ".join(f"{d * 1000:.1f} ms" for d in delays)
    print(report)
    build = Path(__file__).resolve().parent.parent / "build"
    build.mkdir(exist_ok=True)
    (build / f"nginx-latency-{project.mode}-{kind}.txt").write_text(report + "\n")
    # A buffering proxy would hold a small event until a buffer fills or the 15 s heartbeat.
    assert max(delays) < 1.0, report


def test_nginx_serves_static_redirects_http_and_speaks_http2(behind_nginx):
    import http.client
    import ssl

    project, daphnes, nginx = behind_nginx
    plain = http.client.HTTPConnection("127.0.0.1", nginx.http, timeout=5)
    plain.request("GET", "/sse/x/", headers={"Host": "example.com"})
    response = plain.getresponse()
    assert response.status == 301 and response.getheader("Location").startswith("https://")
    plain.close()
    context = ssl._create_unverified_context()
    secure = http.client.HTTPSConnection("127.0.0.1", nginx.https, timeout=5, context=context)
    secure.request("GET", "/static/demo/sse-client.js")
    response = secure.getresponse()
    assert response.status == 200 and "javascript" in response.getheader("Content-Type")
    assert b"SSEClient" in response.read()
    secure.close()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", nginx.https)) as raw, context.wrap_socket(raw) as tls:
        assert tls.selected_alpn_protocol() == "h2"


def test_new_connections_survive_a_dead_instance(behind_nginx):
    import signal

    project, daphnes, nginx = behind_nginx
    daphnes[0].stop(signal.SIGKILL)
    for attempt in range(10):
        client = SSEConnection("127.0.0.1", nginx.https, f"/sse/failover-{attempt}/", tls=True)
        assert client.wait_status() == 200, f"attempt {attempt}"
        client.close()


def https_status(nginx: Nginx, path: str, source: str) -> int:
    import http.client
    import ssl

    context = ssl._create_unverified_context()
    conn = http.client.HTTPSConnection("127.0.0.1", nginx.https, timeout=5, context=context, source_address=(source, 0))
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_nginx_serves_metrics_to_this_machine_only(baked, redis_server, tmp_path):
    project = baked(daphne_port=str(free_port_pair()))
    daphnes, nginx, _env = serve_behind_nginx(project, redis_server.url, tmp_path, SSE_METRICS="1")
    try:
        assert https_status(nginx, "/metrics/", source="127.0.0.1") == 200
        # Another address on the loopback network stands for a remote client.
        assert https_status(nginx, "/metrics/", source="127.0.0.2") == 403
        assert https_status(nginx, "/health/", source="127.0.0.2") == 200, "only /metrics/ is kept in"
    finally:
        nginx.stop()
        for daphne in daphnes:
            daphne.stop()
    assert "Traceback" not in daphnes[0].output()


def test_tokens_never_reach_the_access_logs(behind_nginx, redis_server):
    """nginx's log_format and Daphne's own access log mask ?token=..."""
    project, daphnes, nginx = behind_nginx
    env = project.env(REDIS_URL=redis_server.url)
    token = project.manage("sse_token", "logged", "--ttl", "60", env=env).stdout.strip()
    assert len(token) > 20
    paths = [
        f"/sse/logged/?token={token}",
        f"/sse/?stream=logged&token={token}&last_event_id=logged:",
        "/sse/x/?token=forged",
    ]
    for path in paths:
        client = SSEConnection("127.0.0.1", nginx.https, path, tls=True)
        assert client.wait_status() == (403 if "forged" in path else 200)
        client.close()
    nginx_log = nginx.workdir / "access.log"
    deadline = time.monotonic() + 10
    while nginx_log.read_text().count("token=[masked]") < len(paths) and time.monotonic() < deadline:
        time.sleep(0.2)  # nginx writes a line when the stream has ended
    for path in [nginx_log, *(d.log for d in daphnes)]:
        text = path.read_text()
        assert token not in text and "forged" not in text, f"{path}:\n{text}"
    assert nginx_log.read_text().count("token=[masked]") == len(paths), nginx_log.read_text()
    assert '"GET /sse/logged/?token=[masked] HTTP/' in nginx_log.read_text()
    # Daphne logs a request when its response ends: the 403 at least (streams end when nginx stops).
    assert "token=[masked]" in "".join(d.output() for d in daphnes)

"""RUN networking, as docker's default: real builds on the busybox base reach a peer
(an HTTP server and a DNS resolver this module runs in a network namespace of its
own, joined to the host by a veth pair) through slirp4netns, never the host's
loopback; `--network none` has only lo; `RUN --network=host` needs the network.host
entitlement; the mode is in the cache key; no helper process, namespace or mount
outlives a step, also when lamina is SIGKILLed mid-RUN."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from lamina.builder.sandbox.network import filter_resolv_conf, resolv_conf
from tests.builder.buildkit import REPO, build, build_rootfs, make_base, make_context
from tests.conftest import require_tool

pytestmark = pytest.mark.root

TOKEN = "served-from-the-peer-namespace\n"
DNS_NAME = "web.lamina.test"
DNS_ADDR = "198.51.100.7"  # TEST-NET-2: only our resolver can give this answer

# A tiny DNS responder (stdlib only): A records for *.lamina.test, NXDOMAIN for other
# names, an empty NOERROR for other types of ours. Logs every query name.
_RESOLVER = r"""
import socket, struct, sys, select
socks = []
for addr in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 53))
    socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(4096)
        if len(data) < 12:
            continue
        i, labels = 12, []
        while i < len(data) and data[i]:
            labels.append(data[i + 1:i + 1 + data[i]].decode("ascii", "replace"))
            i += 1 + data[i]
        qtype = struct.unpack("!H", data[i + 1:i + 3])[0]
        question = data[12:i + 5]
        name = ".".join(labels).lower()
        print("query", name, qtype, flush=True)
        ours = name.endswith("lamina.test")
        answers = b""
        if ours and qtype == 1:
            answers = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4)
                       + socket.inet_aton("%s"))
        rcode = 0 if ours else 3
        header = data[:2] + struct.pack("!HHHHH", 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
        s.sendto(header + question + answers, peer)
""" % DNS_ADDR


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"


def _wait_tcp(addr: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((addr, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Peer:
    """A network namespace with a veth to the host, an HTTP server and a resolver."""

    def __init__(self, base: Path) -> None:
        tag = os.getpid() % 100000
        self.name = f"lamina-t{tag}"
        self.veth_host, self.veth_peer = f"lt{tag}h", f"lt{tag}p"
        routes = subprocess.run(["ip", "-o", "route"], capture_output=True, text=True).stdout
        net = next(n for n in [tag % 250 + 1, *range(1, 251)] if f"10.123.{n}." not in routes)
        self.host_addr, self.addr = f"10.123.{net}.1", f"10.123.{net}.2"
        self.etc = Path("/etc/netns") / self.name
        self.made_etc_netns = not self.etc.parent.exists()
        self.procs: list[subprocess.Popen] = []
        self.www = base / "www"
        self.www.mkdir()
        (self.www / "token.txt").write_text(TOKEN)
        self.resolver_log = base / "resolver.log"
        self.port = 8080

    def start(self) -> "Peer":
        _ip("netns", "add", self.name)
        _ip("link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_peer)
        _ip("link", "set", self.veth_peer, "netns", self.name)
        _ip("addr", "add", f"{self.host_addr}/24", "dev", self.veth_host)
        _ip("link", "set", self.veth_host, "up")
        for args in (("addr", "add", f"{self.addr}/24", "dev", self.veth_peer),
                     ("link", "set", self.veth_peer, "up"), ("link", "set", "lo", "up")):
            _ip("netns", "exec", self.name, "ip", *args)
        # lamina runs inside this namespace in one test: its "host" resolver is 127.0.0.1
        self.etc.mkdir(parents=True)
        (self.etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        exec_in = ["ip", "netns", "exec", self.name]
        self.procs.append(subprocess.Popen(
            [*exec_in, sys.executable, "-m", "http.server", str(self.port), "--bind", self.addr,
             "--directory", str(self.www)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        log = open(self.resolver_log, "w")
        resolver = subprocess.Popen([*exec_in, sys.executable, "-c", _RESOLVER, self.addr,
                                     "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(resolver)
        deadline = time.monotonic() + 10
        while "ready" not in self.resolver_log.read_text():
            assert resolver.poll() is None and time.monotonic() < deadline, \
                self.resolver_log.read_text()
            time.sleep(0.05)
        _wait_tcp(self.addr, self.port)
        return self

    def queries(self) -> list[str]:
        return [l.split()[1] for l in self.resolver_log.read_text().splitlines()
                if l.startswith("query ")]

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True)
        shutil.rmtree(self.etc, ignore_errors=True)
        if self.made_etc_netns:
            try:
                self.etc.parent.rmdir()
            except OSError:
                pass  # someone else's namespace config arrived meanwhile


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    require_tool("ip")
    require_tool("slirp4netns")
    p = Peer(tmp_path_factory.mktemp("peer"))
    try:
        yield p.start()
    finally:
        p.stop()
    assert p.name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                        text=True).stdout


class _Counting(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _Counting.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"host loopback reached\n")

    def log_message(self, *args):
        pass


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture
def host_loopback():
    """HTTP servers on the host's 127.0.0.1 and ::1: (v4 port, v6 port, hits)."""
    _Counting.hits = []
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting),
               _V6Server(("::1", 0), _Counting)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield servers[0].server_address[1], servers[1].server_address[1], _Counting.hits
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


# --- process and namespace bookkeeping ------------------------------------------------

def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(l.split(":\t", 1) for l in text.splitlines() if ":\t" in l)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie: a zombie holds no namespace, fd or memory; this
    machine's pid 1 does not reap orphans)."""
    st = _status(pid)
    return bool(st) and not st.get("State", "").startswith("Z")


def _descendants(ancestor: int) -> dict[int, str]:
    """Live descendants of `ancestor`: pid -> name."""
    parents, names = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _status(int(entry))
            if st and not st.get("State", "").startswith("Z"):
                parents[int(entry)] = int(st.get("PPid", "0") or 0)
                names[int(entry)] = st.get("Name", "")
    found = {}
    for pid in parents:
        p = parents[pid]
        for _ in range(64):
            if p == ancestor:
                found[pid] = names[pid]
                break
            if p not in parents:
                break
            p = parents[p]
    return found


def _descendants_named(ancestor: int, name: str) -> set[int]:
    return {pid for pid, n in _descendants(ancestor).items() if n == name}


class _HelperWatch:
    """Polls for slirp4netns processes started under `ancestor` while a build runs."""

    def __init__(self, ancestor: int) -> None:
        self.ancestor, self.seen, self.done = ancestor, set(), threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.done.is_set():
            self.seen |= _descendants_named(self.ancestor, "slirp4netns")
            time.sleep(0.005)

    def __enter__(self) -> "_HelperWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def _ifaces(text: str) -> list[str]:
    return sorted(l.split(":")[0].strip() for l in text.splitlines()[2:])


# --- resolv.conf content (pure) ---------------------------------------------------------

def test_resolv_conf_as_docker_filters_it():
    host = (b"# generated\nsearch corp.example\nnameserver 127.0.0.53\nnameserver 10.1.1.1\n"
            b"nameserver ::1\nnameserver fd00::53\noptions ndots:2 edns0")
    # docker: loopback nameservers removed, everything else kept; IPv6 servers dropped
    # on a network without IPv6 (as docker's FilterResolvDNS with IPv6 off)
    expected = (b"# generated\nsearch corp.example\nnameserver 10.1.1.1\n"
                b"options ndots:2 edns0\n")
    assert resolv_conf("default", (host, False)) == expected
    assert resolv_conf("none", (host, False)) == expected
    assert resolv_conf("host", (host, False)) == host  # the host's file, unchanged
    only_local = b"nameserver 127.0.0.1\nsearch lan\n"
    # docker's fallback is Google's resolvers; the default network uses slirp4netns's
    # forwarder to the host's own resolver instead; none keeps docker's fallback
    assert resolv_conf("default", (only_local, False)) == b"search lan\nnameserver 10.0.2.3\n"
    assert resolv_conf("none", (only_local, False)) == (
        b"search lan\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n")
    assert filter_resolv_conf(b"", ("10.0.2.3",)) == b"nameserver 10.0.2.3\n"


_LINE = st.one_of(
    st.sampled_from(["nameserver 127.0.0.1", "nameserver 127.1.2.3", "nameserver ::1",
                     "nameserver fd00::53", "nameserver fe80::1%eth0", "nameserver 10.9.8.7",
                     "nameserver 192.0.2.53", "  nameserver\t127.0.0.53  ", "search a.example b",
                     "options ndots:3", "# comment", "", "domain lan", "nameserver bogus"]),
    st.text(alphabet="abcdefghij :.#", max_size=20))


@settings(max_examples=60, deadline=None)
@given(st.lists(_LINE, max_size=8), st.sampled_from(["default", "none"]))
def test_resolv_conf_never_names_an_unreachable_nameserver(lines, mode):
    text = "\n".join(lines).encode()
    out = resolv_conf(mode, (text, False)).decode()
    servers = [l.split()[1] for l in out.splitlines()
               if len(l.split()) >= 2 and l.split()[0] == "nameserver"]
    assert servers  # always one to ask
    for server in servers:
        assert not server.startswith("127.") and ":" not in server
    # every other line of the host's file is kept, in order
    def others(t: str) -> list[str]:
        return [l for l in t.splitlines() if not (len(l.split()) >= 2
                                                  and l.split()[0] == "nameserver")]
    assert others(out) == others(text.decode())


# --- builds ---------------------------------------------------------------------------

def test_default_network_reaches_a_peer_but_not_the_host_loopback(build_store, tmp_path, peer,
                                                                  host_loopback):
    root, _ = build_store
    port4, port6, hits = host_loopback
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # UDP too (nslookup as client)
    udp.bind(("127.0.0.1", 0))
    udp_port = udp.getsockname()[1]
    targets = [f"http://127.0.0.1:{port4}/v4", f"http://10.0.2.2:{port4}/gateway",
               f"http://[::1]:{port6}/v6", f"http://10.0.2.3:{port4}/dns-forwarder"]
    ctx = make_context(tmp_path / "ctx", f"""\
FROM bb
RUN wget -q -O /token http://{peer.addr}:{peer.port}/token.txt \\
 && readlink /proc/self/ns/net > /netns && cat /proc/net/dev > /ifaces \\
 && for u in {" ".join(targets)}; do timeout 5 wget -q -O- "$u" && echo "REACHED $u"; \\
    done > /loopback 2>&1; \\
    for s in 10.0.2.2 127.0.0.1; do timeout 1 nslookup x.test $s:{udp_port} & done; wait; true
""")
    out = tmp_path / "rootfs"
    # processes of this test session that exist already (e.g. a session-scoped dockerd
    # of another test module) are not the build's
    before = set(_descendants(os.getpid()))
    try:
        with _HelperWatch(os.getpid()) as watch:
            build_rootfs(root, ctx, out)
        udp.setblocking(False)
        with pytest.raises(BlockingIOError):
            udp.recvfrom(512)  # no datagram reached the host's loopback
    finally:
        udp.close()
    assert (out / "token").read_text() == TOKEN
    assert "REACHED" not in (out / "loopback").read_text()
    assert hits == []  # not one request reached the host's loopback servers
    assert _ifaces((out / "ifaces").read_text()) == ["lo", "tap0"]
    # nothing outlives the step: the helper is gone (reaped, not even a zombie), no
    # process of ours is left (so nothing holds the step's netns: no process, no mount)
    assert watch.seen, "no slirp4netns helper was seen"
    assert not [p for p in watch.seen if _status(p)]
    peer_servers = {p.pid for p in peer.procs}
    assert {p: n for p, n in _descendants(os.getpid()).items()
            if p not in peer_servers and p not in before} == {}
    inode = (out / "netns").read_text().strip()
    assert inode.startswith("net:[")
    assert inode[5:-1] not in Path("/proc/self/mountinfo").read_text()
    # and the host's mounts are untouched: slirp4netns's own sandbox once unmounted the
    # shared /run/netns/<name> mounts `ip netns` makes (it made only / private)
    assert f"/run/netns/{peer.name} " in Path("/proc/self/mountinfo").read_text()


def test_dns_answers_come_from_the_resolver_the_host_names(build_store, tmp_path, peer,
                                                          monkeypatch):
    root, _ = build_store
    host_conf = tmp_path / "host-resolv.conf"
    host_conf.write_text(f"search lamina.test\nnameserver 127.0.0.1\nnameserver ::1\n"
                         f"nameserver {peer.addr}\noptions ndots:1\n")
    monkeypatch.setenv("LAMINA_HOST_RESOLV_CONF", str(host_conf))
    ctx = make_context(tmp_path / "ctx", f"""\
FROM bb
RUN cat /etc/resolv.conf > /resolv && nslookup {DNS_NAME} > /answer 2>&1; true
""")
    out = tmp_path / "rootfs"
    build_rootfs(root, ctx, out)
    # the host's file without its loopback nameservers (docker's rule)
    assert (out / "resolv").read_text() == (f"search lamina.test\nnameserver {peer.addr}\n"
                                            "options ndots:1\n")
    answer = (out / "answer").read_text()
    assert f"Address: {DNS_ADDR}" in answer, answer
    assert DNS_NAME in peer.queries()


def test_a_host_with_only_a_loopback_resolver_is_served_through_slirp4netns(
        build_store, tmp_path, peer):
    # lamina runs inside the peer namespace, whose resolv.conf names only 127.0.0.1
    # (as a host with systemd-resolved or dnsmasq): the RUN gets slirp4netns's
    # forwarder, which relays to that resolver on the host's loopback
    root, _ = build_store
    name = "fwd.lamina.test"
    ctx = make_context(tmp_path / "ctx", f"""\
FROM bb
RUN cat /etc/resolv.conf > /resolv && nslookup {name} > /answer 2>&1; true
""")
    out = tmp_path / "rootfs"
    proc = subprocess.run(
        ["ip", "netns", "exec", peer.name, sys.executable, "-m", "lamina", "--root", str(root),
         "build", "--progress", "plain", "--output", f"type=local,dest={out}", str(ctx)],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / "resolv").read_text() == "nameserver 10.0.2.3\n"
    assert f"Address: {DNS_ADDR}" in (out / "answer").read_text()
    assert name in peer.queries()


def test_network_none_has_only_lo(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", """\
FROM bb
RUN cat /proc/net/dev > /ifaces-build
RUN --network=none cat /proc/net/dev > /ifaces-step
RUN --network=default cat /proc/net/dev > /ifaces-default
""")
    out = tmp_path / "rootfs"
    build_rootfs(root, ctx, out, "--network", "none")
    for name in ("ifaces-build", "ifaces-step", "ifaces-default"):  # default = the build's
        assert _ifaces((out / name).read_text()) == ["lo"], name
    out2 = tmp_path / "rootfs2"
    build_rootfs(root, ctx, out2)  # default network: the step's --network=none still has lo only
    assert _ifaces((out2 / "ifaces-build").read_text()) == ["lo", "tap0"]
    assert _ifaces((out2 / "ifaces-step").read_text()) == ["lo"]


def test_run_network_host_needs_the_entitlement(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", """\
FROM bb
RUN echo first-step-output-marker
RUN --network=host cat /proc/net/dev > /ifaces
""")
    refused = build(root, ctx)
    assert refused.code != 0
    assert "Dockerfile:3" in refused.stderr and "network.host" in refused.stderr
    assert "--allow network.host" in refused.stderr
    assert "RUN --network=host cat /proc/net/dev" in refused.stderr  # the line is shown
    assert "Traceback" not in refused.stderr
    assert "first-step-output-marker\n" not in refused.stderr  # refused before anything ran
    out = tmp_path / "rootfs"
    build_rootfs(root, ctx, out, "--allow", "network.host")
    host_ifaces = _ifaces(Path("/proc/net/dev").read_text())
    assert _ifaces((out / "ifaces").read_text()) == host_ifaces
    # a cached result does not bypass the entitlement
    again = build(root, ctx)
    assert again.code != 0 and "network.host" in again.stderr
    # the build's own --network host is the user's choice: no entitlement needed
    assert build(root, ctx, "--network", "host").check()


def test_network_mode_is_in_the_cache_key(build_store, tmp_path):
    root, _ = build_store
    ctx = make_context(tmp_path / "ctx", "FROM bb\nRUN echo netkey > /k\n")
    build(root, ctx, "--network", "none").check()
    default = build(root, ctx).check().step("RUN echo netkey")
    assert not default.cached and 'network changed: "none" -> "default"' in default.miss
    assert build(root, ctx).check().step("RUN echo netkey").cached
    ctx2 = make_context(tmp_path / "ctx2", "FROM bb\nRUN --network=default echo netkey > /k\n")
    # --network=default is the build's mode: the same key as no flag
    assert build(root, ctx2, "--network", "none").check().step("RUN --network").cached


def test_sigkill_of_lamina_mid_run_leaves_no_helper_namespace_or_mount(tmp_path):
    require_tool("slirp4netns")
    root = tmp_path / "store"
    make_base(root, tmp_path / "base")
    marker = f"{os.getpid() % 100000}7"
    ctx = make_context(tmp_path / "ctx", f"FROM bb\nRUN echo started && sleep {marker}\n")
    proc = subprocess.Popen([sys.executable, "-m", "lamina", "--root", str(root), "build",
                             "--progress", "plain", str(ctx)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for line in proc.stderr:
            if line.endswith(b" started\n"):  # the RUN's output, not the step's title
                break
        else:
            pytest.fail("the RUN never started")
        deadline = time.monotonic() + 5
        while not _descendants_named(proc.pid, "sleep") and time.monotonic() < deadline:
            time.sleep(0.02)
        ours = _descendants(proc.pid)  # C1, the helper, init, sh, sleep
        helpers = {p for p, n in ours.items() if n == "slirp4netns"}
        sleeps = {p for p, n in ours.items() if n == "sleep"}
        assert helpers and len(sleeps) == 1
        inode = os.readlink(f"/proc/{next(iter(sleeps))}/ns/net")
        assert inode != os.readlink("/proc/self/ns/net")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    deadline = time.monotonic() + 5  # the chain of PDEATHSIGs is asynchronous
    while any(_alive(p) for p in ours) and time.monotonic() < deadline:
        time.sleep(0.05)
    # every process of the step is gone (or a zombie: holds no namespace, fd or memory;
    # this machine's pid 1 does not reap orphans), so no process holds its netns ...
    assert {p: n for p, n in ours.items() if _alive(p)} == {}
    # ... and no mount does (nor any mount of the step's root is left on the host)
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(root) not in mounts and inode[5:-1] not in mounts


# --- the helper's failures are clear and leave nothing ----------------------------------

def test_missing_slirp4netns_is_one_clear_error(busybox_rootfs, run_sandbox, monkeypatch):
    from lamina.builder.errors import SandboxError

    monkeypatch.setenv("PATH", "/nonexistent")  # the sandbox looks slirp4netns up in PATH
    with pytest.raises(SandboxError, match="needs slirp4netns .*--network none"):
        run_sandbox([busybox_rootfs], ["true"], network="default")


def test_a_failing_slirp4netns_is_reported_and_reaped(busybox_rootfs, run_sandbox,
                                                     monkeypatch):
    from lamina.builder.errors import SandboxError
    from lamina.builder.sandbox import network

    require_tool("slirp4netns")
    monkeypatch.setattr(network, "MTU", 70000)  # slirp4netns refuses an MTU past 65521
    before = set(_descendants(os.getpid()))  # e.g. the peer's servers
    with _HelperWatch(os.getpid()) as watch, \
            pytest.raises(SandboxError, match="slirp4netns could not set up .*MTU"):
        run_sandbox([busybox_rootfs], ["true"], network="default")
    assert not [p for p in watch.seen if _status(p)]  # it may exit before a poll sees it
    assert {p: n for p, n in _descendants(os.getpid()).items() if p not in before} == {}

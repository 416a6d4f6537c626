"""A one-node Kubernetes cluster for tests: pods run as real containers.

:class:`NodeCluster` starts, inside a network namespace of its own, everything a node
needs: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (with
runc and the CNI bridge plugin), the kubelet, kube-proxy in iptables mode and CoreDNS
for ``cluster.local``. The host reaches the apiserver through a forwarder on
127.0.0.1; nothing else is reachable from outside the namespace, and nothing listens
beyond 127.0.0.1 on the host.

The Kubernetes binaries come from the same pinned wrapper module as the control plane
(``tests/cluster/gomod/kubernetes``), CoreDNS from ``tests/cluster/gomod/coredns``,
and the pause and test programs from ``tests/assets/node``; all are built once and
cached by version (see docs/control-plane.md). The node's own images (pause, the test
image) are OCI archives written by ``images/oci.py`` and imported into containerd; the
product's images are pushed to an image registry (``tests/cluster/gomod/registry``)
that runs inside the namespace, and containerd pulls them from it over plain HTTP, as
a node pulls from any registry.

A few paths of the kubelet and containerd cannot be moved (``/var/lib/kubelet/
device-plugins``, ``/var/log/containers``, ``/run/containerd/s``, ``/var/lib/cni``,
the ``/kubepods`` cgroups), so only one node cluster runs on a machine at a time; a
machine-wide file lock makes a second one wait. It needs root.

Run ``tests/cluster/up --node`` (or ``python -m tests.cluster.node``) to start one by
hand.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml
from cryptography.hazmat.primitives import serialization
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from modelfleet_serving.processes import set_parent_death_signal

from images import oci
from images.build import RECIPES, Builder
from images.registry import Registry
from tests.cluster.controlplane import (
    GOMOD_DIR,
    KUBERNETES_MODULE,
    READY_TIMEOUT,
    CertificateAuthority,
    ControlPlaneError,
    TestCluster,
    _go_build,
    _interrupt_on_signals,
    _key_pem,
    _kubeconfig,
    _new_key,
    _tail,
    _version_ldflags,
    apiserver_security_flags,
    build_cached,
    cache_root,
    ensure_binaries,
    module_version,
    stop_group,
)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ layout

NODE_NAME = "modelfleet-node"
NETNS = "modelfleet-node"
NETNS_PATH = Path("/run/netns") / NETNS
# The node's own address, on one end of a veth pair inside the namespace. The kubelet
# refuses a loopback node IP and this kind of kernel has no `dummy` links, so a veth
# pair (whose other end is merely up) gives the node an ordinary interface.
NODE_NETWORK = ipaddress.ip_network("10.222.0.0/24")
NODE_IP = "10.222.0.1"
NODE_LINK, NODE_LINK_PEER = "mfnode0", "mfnode1"
# Pods sit on a CNI bridge in the namespace. Nothing leaves the namespace, so there is
# no masquerading and no default route.
POD_CIDR = ipaddress.ip_network("10.88.0.0/16")
POD_GATEWAY = "10.88.0.1"
CNI_NETWORK = "modelfleet-node"
CNI_BRIDGE = "mfcni0"
CNI_BIN_DIR = Path("/usr/lib/cni")
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
KUBERNETES_SERVICE_IP = str(next(SERVICE_CIDR.hosts()))
CLUSTER_DOMAIN = "cluster.local"
# CoreDNS runs as a process of the node (not a pod) on the node IP, which pods reach
# through their bridge gateway like any address of the node.
DNS_IP = NODE_IP

# Ports inside the namespace, which has a port space of its own: fixed numbers are safe.
ETCD_PORT, ETCD_PEER_PORT = 2379, 2380
API_PORT = 6443
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
KUBELET_PORT, KUBELET_HEALTHZ_PORT = 10250, 10248
KUBE_PROXY_HEALTHZ_PORT, KUBE_PROXY_METRICS_PORT = 10256, 10249
DNS_HEALTH_PORT, DNS_READY_PORT = 8080, 8181
# The image registry, on the node IP so that pods and containerd reach it alike.
REGISTRY_PORT = 5000
REGISTRY = f"{NODE_IP}:{REGISTRY_PORT}"

NODE_COMMANDS = ("kubelet", "kube-scheduler", "kube-proxy")
NODE_BINARIES = (*NODE_COMMANDS, "coredns")
COREDNS_MODULE = "github.com/coredns/coredns"
REGISTRY_MODULE = "github.com/distribution/distribution/v3"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "node"
ASSET_PROGRAMS = ("pause", "httpecho")
IMAGE_REPOSITORY = "modelfleet.test/node"

# The machine-wide lock, and the host paths the kubelet, containerd and the CNI library
# use whatever they are told.
LOCK_PATH = Path("/run/modelfleet-node.lock")
DEVICE_PLUGINS_DIR = Path("/var/lib/kubelet/device-plugins")
CONTAINER_LOGS_DIR = Path("/var/log/containers")
SHIM_SOCKETS_DIR = Path("/run/containerd/s")
CNI_RESULTS_DIR = Path("/var/lib/cni/results")
CGROUP_NAME = "kubepods"
WORKDIR_PREFIX = "modelfleet-node-"

HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip", "iptables", "nsenter")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")

# Where the host tools are looked up, for the fixture and the components alike:
# containerd finds its shim and runc on PATH, and on Debian ip and runc live in sbin.
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"]
)

NODE_READY_TIMEOUT = 180.0
LOCK_TIMEOUT = 900.0
KILL_TIMEOUT = 10.0
CTR_TIMEOUT = 120.0


class NodeClusterError(ControlPlaneError):
    """The node cluster failed to build, start or stop; the message says what and why."""


# --------------------------------------------------------------------------- build


def node_versions() -> tuple[str, str]:
    """The pinned (Kubernetes, CoreDNS) versions, read from the wrapper go.mod files."""
    return (
        module_version(GOMOD_DIR / "kubernetes" / "go.mod", KUBERNETES_MODULE),
        module_version(GOMOD_DIR / "coredns" / "go.mod", COREDNS_MODULE),
    )


def node_bin_dir() -> Path:
    """Where kubelet, kube-scheduler, kube-proxy and coredns of the pinned versions live."""
    kube, coredns = node_versions()
    return cache_root() / "node" / f"k8s-{kube}-coredns-{coredns}" / "bin"


def ensure_node_binaries() -> Path:
    """Return the directory with kubelet, kube-scheduler, kube-proxy and coredns.

    Built on first use from the wrapper modules, like :func:`ensure_binaries`.
    """
    kube_version, _ = node_versions()

    def build(staging: Path) -> None:
        _go_build(
            GOMOD_DIR / "kubernetes",
            f"{staging}/",
            [f"{KUBERNETES_MODULE}/cmd/{name}" for name in NODE_COMMANDS],
            ldflags=_version_ldflags(kube_version),
        )
        # The wrapper's own main package: CoreDNS with the plugins the node uses.
        _go_build(GOMOD_DIR / "coredns", f"{staging}/coredns", ["."], ldflags="")

    return build_cached(node_bin_dir(), NODE_BINARIES, build)


def registry_version() -> str:
    """The pinned version of the image registry, read from its wrapper go.mod."""
    return module_version(GOMOD_DIR / "registry" / "go.mod", REGISTRY_MODULE)


def ensure_registry() -> Path:
    """Return the path of the ``registry`` binary (distribution), building it on first use."""

    def build(staging: Path) -> None:
        # The wrapper's own main package: upstream's registry, filesystem storage only.
        _go_build(GOMOD_DIR / "registry", f"{staging}/registry", ["."], ldflags="-s -w")

    target = cache_root() / "node" / f"registry-{registry_version()}"
    return build_cached(target, ("registry",), build) / "registry"


def registry_storage() -> Path:
    """Where the node's registry keeps its blobs, across clusters (see ``_start_registry``)."""
    return cache_root() / "node" / "registry-storage"


def assets_version() -> str:
    """A digest of the Go sources in tests/assets/node: the cache key of their build."""
    digest = hashlib.sha256()
    for path in sorted(p for p in ASSETS_DIR.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(ASSETS_DIR)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def ensure_assets() -> Path:
    """Return the directory with the static ``pause`` and ``httpecho`` programs."""

    def build(staging: Path) -> None:
        # Static binaries need nothing from an image but themselves; -s -w drops the
        # symbol tables the images do not need.
        _go_build(
            ASSETS_DIR,
            f"{staging}/",
            [f"./{name}" for name in ASSET_PROGRAMS],
            ldflags="-s -w",
            env={"CGO_ENABLED": "0"},
        )

    return build_cached(cache_root() / "node" / f"assets-{assets_version()}", ASSET_PROGRAMS, build)


@dataclass(frozen=True)
class NodeImages:
    """The images every node cluster has: the sandbox (pause) image and the test image.

    The test image's entrypoint is ``/httpecho``: ``serve``, ``probe URL...`` or
    ``say WORD...`` (see tests/assets/node/httpecho/main.go). It runs as user 65532.
    """

    pause: oci.Image
    httpecho: oci.Image


def write_test_images(directory: Path, assets: Path) -> NodeImages:
    """Pack the pause and httpecho programs into OCI archives under ``directory``."""
    tag = assets_version()
    pause = oci.write_image(
        directory / "pause.tar",
        f"{IMAGE_REPOSITORY}/pause:{tag}",
        [[oci.File("/pause", assets / "pause", 0o755)]],
        entrypoint=["/pause"],
        user="65535:65535",
    )
    httpecho = oci.write_image(
        directory / "httpecho.tar",
        f"{IMAGE_REPOSITORY}/httpecho:{tag}",
        [[oci.File("/httpecho", assets / "httpecho", 0o755)]],
        entrypoint=["/httpecho"],
        cmd=["serve"],
        user="65532:65532",
        exposed_ports=["8080/tcp"],
    )
    return NodeImages(pause, httpecho)


@dataclass(frozen=True)
class ProductImages:
    """The product's images on a node cluster, by the full names pods use.

    ``registry`` is the registry they were pushed to (``host:port``), or ``None`` when
    they were loaded into containerd directly. ``timings`` has, in seconds, ``build``
    (the images built, or found in the cache) and ``push`` (or load).
    """

    operator: str
    ray: str
    registry: str | None
    timings: dict[str, float]

    def chart_set(self) -> list[str]:
        """The ``helm --set`` arguments that point the chart at these images."""
        operator, operator_tag = self.operator.rsplit(":", 1)
        ray, ray_tag = self.ray.rsplit(":", 1)
        return [
            f"--set=operator.image.repository={operator}",
            f"--set=operator.image.tag={operator_tag}",
            f"--set=rayImage.repository={ray}",
            f"--set=rayImage.tag={ray_tag}",
        ]


def provide_product_images(
    cluster: NodeCluster, *, ray: str = "ray-cpu", via_registry: bool = True
) -> ProductImages:
    """Build (or find cached) the operator image and the Ray image ``ray``; put them on the node.

    With ``via_registry`` they are pushed to the node's registry and the kubelet pulls
    them when a pod first needs them, as in production; otherwise they are loaded into
    containerd directly under ``docker.io/<name>``, which pods name as ``<name>``.
    """
    started = time.monotonic()
    builder = Builder()
    built = [builder.build(RECIPES[key]) for key in ("operator", ray)]
    ready = time.monotonic()
    names = []
    for item in built:
        if via_registry:
            names.append(cluster.push_image(builder.store, item.image))
        else:
            cluster.load_image(builder.store, item.image, f"docker.io/{item.image.name}")
            names.append(item.image.name)
    timings = {"build": ready - started, "push": time.monotonic() - ready}
    return ProductImages(names[0], names[1], REGISTRY if via_registry else None, timings)


# ------------------------------------------------------------------ kernel interfaces

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_MNT_DETACH = 2


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


@contextlib.contextmanager
def _in_netns(netns: Path) -> Iterator[None]:
    """Move the calling thread (only it) into ``netns`` for the duration of the block.

    A socket belongs to the namespace it was created in, and /proc/sys/net shows the
    calling thread's namespace, so this is how the fixture process reaches the node's
    ports and sets its sysctls without a helper process.
    """
    with open("/proc/thread-self/ns/net", "rb") as home, netns.open("rb") as target:
        _check(_libc.setns(target.fileno(), _CLONE_NEWNET), f"setns into {netns}")
        try:
            yield
        finally:
            _check(_libc.setns(home.fileno(), _CLONE_NEWNET), "setns back to the host")


def _netns_connect(netns: Path, address: tuple[str, int], timeout: float) -> socket.socket:
    """A TCP connection to ``address`` as seen from inside ``netns``."""
    with _in_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _netns_get(
    netns: Path, port: int, path: str, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> tuple[int, str]:
    """GET http(s)://``host``:``port````path`` inside ``netns``: (status, body)."""
    raw = _netns_connect(netns, (host, port), timeout=5)
    with contextlib.ExitStack() as stack:
        stack.callback(raw.close)
        sock: socket.socket = raw
        if tls is not None:
            sock = stack.enter_context(tls.wrap_socket(raw, server_hostname=host))
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read().decode(errors="replace").strip()


def _insecure_tls() -> ssl.SSLContext:
    """TLS without verification, for the self-signed health endpoints of components."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount, in /proc/self/mountinfo order."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        separator = fields.index("-")
        # Spaces and other odd characters in paths are written as octal escapes.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        mounts.append((point, fields[separator + 1]))
    return mounts


def _is_mount_point(path: Path) -> bool:
    return any(point == str(path) for point, _ in _mounts())


def _cgroup_roots() -> list[Path]:
    """The mount point of every cgroup hierarchy (v1 controllers, named ones, and v2)."""
    return [Path(point) for point, kind in _mounts() if kind in ("cgroup", "cgroup2")]


def _under(path: str, roots: Iterable[Path]) -> bool:
    return any(path == str(root) or path.startswith(f"{root}/") for root in roots)


@dataclass(frozen=True)
class _Process:
    """A process identified by PID and start time, so a reused PID is not mistaken."""

    pid: int
    start: str

    @staticmethod
    def of(pid: int) -> _Process | None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        # The command name (field 2) may contain spaces; fields after it are fixed.
        return _Process(pid, stat.rsplit(")", 1)[1].split()[19])

    def alive(self) -> bool:
        current = _Process.of(self.pid)
        if current is None or current.start != self.start:
            return False
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"  # a zombie is gone, only its parent has not reaped it yet

    def describe(self) -> str:
        try:
            command = Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except FileNotFoundError:
            command = b"?"
        return f"PID {self.pid} ({command.decode(errors='replace').strip()[:160]})"

    def rss(self) -> int:
        """Resident memory in bytes (0 once gone)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
        return 0


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _processes_in_netns(netns: Path) -> list[_Process]:
    """Processes whose network namespace is ``netns`` (none if it does not exist)."""
    try:
        target = netns.stat()
    except FileNotFoundError:
        return []
    found = []
    for pid in _all_pids():
        if pid == os.getpid():
            continue  # the fixture's own threads enter the namespace for a moment only
        try:
            ns = os.stat(f"/proc/{pid}/ns/net")
        except (FileNotFoundError, PermissionError):
            continue
        if (ns.st_dev, ns.st_ino) == (target.st_dev, target.st_ino):
            process = _Process.of(pid)
            if process is not None:
                found.append(process)
    return found


def _processes_in_cgroups() -> list[_Process]:
    """Processes in the kubelet's /kubepods cgroups, in any hierarchy."""
    pids: set[int] = set()
    for root in _cgroup_roots():
        top = root / CGROUP_NAME
        if not top.is_dir():
            continue
        for directory, _, files in os.walk(top):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    text = (Path(directory) / "cgroup.procs").read_text()
                    pids.update(int(pid) for pid in text.split())
    return [p for p in map(_Process.of, sorted(pids)) if p is not None]


def _shims_of(roots: Sequence[Path]) -> list[_Process]:
    """containerd shims whose command line names a path under ``roots``.

    Shims detach from containerd (they outlive it by design), so the cluster's are
    found by the containerd socket in their arguments.
    """
    needles = [str(root).encode() for root in roots]
    found = []
    for pid in _all_pids():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        program = command.split(b"\0", 1)[0]
        if b"containerd-shim" in program and any(needle in command for needle in needles):
            process = _Process.of(pid)
            if process is not None:
                found.append(process)
    return found


def _kill_all(processes: Iterable[_Process]) -> list[_Process]:
    """SIGKILL ``processes`` and wait until they are gone; return those still alive."""
    remaining = [p for p in processes if p.alive()]
    for process in remaining:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_TIMEOUT
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = [p for p in remaining if p.alive()]
    return remaining


def _unmount_under(roots: Sequence[Path]) -> list[str]:
    """Unmount every mount at or below ``roots``, topmost first; return those that stay."""
    for _ in range(20):  # mounts may be stacked on one point; each pass removes one layer
        points = [point for point, _ in _mounts() if _under(point, roots)]
        if not points:
            return []
        # Later mounts may sit on top of earlier ones: unmount in reverse order.
        for point in reversed(points):
            if _libc.umount2(point.encode(), 0) != 0:
                # Busy (a process still has it open): detach it from the tree instead.
                _libc.umount2(point.encode(), _MNT_DETACH)
    return [point for point, _ in _mounts() if _under(point, roots)]


def _remove_cgroups() -> list[str]:
    """Remove the /kubepods cgroup trees, deepest first; return the paths that stay."""
    left = []
    for root in _cgroup_roots():
        top = root / CGROUP_NAME
        if not top.is_dir():
            continue
        for directory, _, _ in sorted(os.walk(top), key=lambda item: -len(item[0])):
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError as error:
                left.append(f"{directory} ({error.strerror})")
    return left


def _socket_is_dead(path: Path) -> bool:
    """True if ``path`` is a unix socket that nothing listens on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def _sandbox_ids(roots: Sequence[Path]) -> set[str]:
    """The IDs of the pod sandboxes containerd made under ``roots``."""
    ids = set()
    for root in roots:
        for kind in ("root", "state"):
            sandboxes = root / "containerd" / kind / "io.containerd.grpc.v1.cri" / "sandboxes"
            if sandboxes.is_dir():
                ids.update(entry.name for entry in sandboxes.iterdir())
    return ids


def _remove_empty_dirs(*directories: Path) -> None:
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _clean_fixed_paths(roots: Sequence[Path]) -> None:
    """Remove what a node cluster leaves in the host paths it cannot move.

    Only entries that are certainly its own go: the kubelet's device-plugin socket and
    checkpoint, container-log links into ``roots``, CNI results of its network and of
    its sandboxes' loopback, and shim sockets nothing listens on. Directories go only
    once empty.
    """
    for name in ("kubelet.sock", "kubelet_internal_checkpoint"):
        with contextlib.suppress(FileNotFoundError):
            (DEVICE_PLUGINS_DIR / name).unlink()
    _remove_empty_dirs(DEVICE_PLUGINS_DIR, DEVICE_PLUGINS_DIR.parent)
    if CONTAINER_LOGS_DIR.is_dir():
        for link in CONTAINER_LOGS_DIR.iterdir():
            if link.is_symlink() and _under(os.readlink(link), roots):
                link.unlink()
    _remove_empty_dirs(CONTAINER_LOGS_DIR)
    if CNI_RESULTS_DIR.is_dir():
        # Results are named NETWORK-SANDBOX-IFNAME; containerd's own loopback network
        # ("cni-loopback") is recognised by the sandbox IDs.
        sandboxes = _sandbox_ids(roots)
        for result in CNI_RESULTS_DIR.iterdir():
            if result.name.startswith(f"{CNI_NETWORK}-") or any(
                f"-{sandbox}-" in result.name for sandbox in sandboxes
            ):
                result.unlink()
    _remove_empty_dirs(CNI_RESULTS_DIR, CNI_RESULTS_DIR.parent)
    if SHIM_SOCKETS_DIR.is_dir():
        for entry in SHIM_SOCKETS_DIR.iterdir():
            if entry.is_socket() and _socket_is_dead(entry):
                entry.unlink()
    _remove_empty_dirs(SHIM_SOCKETS_DIR, SHIM_SOCKETS_DIR.parent)


def _delete_netns() -> None:
    if NETNS_PATH.exists():
        subprocess.run([_tool("ip"), "netns", "delete", NETNS], capture_output=True, check=False)


def _stale_workdirs() -> list[Path]:
    """Directories of node clusters whose process died without cleaning up."""
    return sorted(Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"))


def _sweep(roots: Sequence[Path]) -> list[str]:
    """Kill, unmount and remove everything a node cluster using ``roots`` may have left.

    Runs after the orderly stop, and before a start to clear what a killed run left.
    Returns descriptions of what could not be removed.
    """
    problems: list[str] = []
    victims = {
        *_processes_in_netns(NETNS_PATH),
        *_processes_in_cgroups(),
        *_shims_of(roots),
    }
    problems += [f"process {p.describe()} survived SIGKILL" for p in _kill_all(victims)]
    problems += [f"mount {point}" for point in _unmount_under([*roots, NETNS_PATH])]
    problems += [f"cgroup {path}" for path in _remove_cgroups()]
    _delete_netns()
    if NETNS_PATH.exists():
        problems.append(f"network namespace {NETNS_PATH}")
    _clean_fixed_paths(roots)
    return problems


# ---------------------------------------------------------------------------- forwarder


class _Forwarder:
    """Forwards TCP connections from host 127.0.0.1:``port`` to a port inside a netns.

    Each accepted connection gets a socket created inside the namespace and two
    threads that copy bytes until each side has closed its half.
    """

    def __init__(self, netns: Path, target_port: int) -> None:
        self._netns = netns
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        # accept() wakes up twice a second to notice close().
        self._listener.settimeout(0.5)
        self.port: int = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="node-forwarder", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = _netns_connect(self._netns, self._target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self._closed.is_set():
                client.close()
                upstream.close()
                return
            self._open.update((client, upstream))
        halves = [0]

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # reset or closed by close(): the connection is over either way
            finally:
                with self._lock:
                    halves[0] += 1
                    done = halves[0] == 2
                    if done:
                        self._open.difference_update((client, upstream))
                if done:
                    client.close()
                    upstream.close()

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        """Stop accepting and cut every open connection."""
        self._closed.set()
        self._listener.close()
        self._thread.join(timeout=5)
        with self._lock:
            connections, self._open = self._open, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()


# -------------------------------------------------------------------------- the cluster


class NodeCluster(TestCluster):
    """A one-node cluster whose pods run as real containers, as a context manager.

    Attributes, valid inside the ``with`` block:

    - ``kubeconfig``: an admin kubeconfig (``system:masters``) for the host;
    - ``kubectl``: the matching kubectl binary;
    - ``server``: the apiserver URL on the host (a forwarder on 127.0.0.1);
    - ``api_client``: a ``kubernetes.client.ApiClient`` for the admin user;
    - ``images``: the images imported at start (:class:`NodeImages`); pods use them
      with ``imagePullPolicy: Never`` (or ``IfNotPresent``): they are in no registry;
    - ``REGISTRY`` (the module's, ``10.222.0.1:5000``): the node's image registry, for
      everything else (:meth:`push_image`);
    - ``node_name``, ``dir``, and ``timings`` in seconds: ``binaries`` (build or cache
      lookup) and ``node_ready`` (from ``started_at``, after the build, to Node Ready).

    Everything lives in a temporary directory (certificates, data, containerd and
    kubelet state, pod logs, one log file per component under ``logs/``). On exit the
    containers are killed through containerd, every component is stopped, leftovers are
    killed, unmounted and removed, and :attr:`leftovers` lists what could not be.
    """

    def __init__(
        self, *, lock_timeout: float = LOCK_TIMEOUT, keep_logs: Path | None = None
    ) -> None:
        """Prepare a cluster; nothing starts before :meth:`start` (or ``with``).

        ``keep_logs`` is a directory to copy the component and pod logs into at stop
        (default: ``$MODELFLEET_NODE_LOGS`` if set), as the cluster's own is removed.
        """
        self._lock_timeout = lock_timeout
        env_logs = os.environ.get("MODELFLEET_NODE_LOGS")
        self._keep_logs = keep_logs or (Path(env_logs) if env_logs else None)
        self._lock_file: IO[bytes] | None = None
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._seen: set[_Process] = set()
        self._forwarder: _Forwarder | None = None
        self._dir: Path | None = None
        self._api_client: k8s_client.ApiClient | None = None
        self._netns_dir_was_mounted = self._netns_dir_existed = True
        self.timings: dict[str, float] = {}
        # time.monotonic() when the start proper began (after the build), for timings.
        self.started_at = 0.0
        self.leftovers: list[str] = []
        self.node_name = NODE_NAME

    # Set by start(), beside TestCluster's; reading them earlier is a programming error.
    images: NodeImages
    _files: dict[str, Path]
    _ctr: list[str]

    # ------------------------------------------------------------------------ start

    def start(self) -> None:
        """Build what is missing, start every component, wait until the node is Ready.

        On any failure everything started so far is stopped before the error is raised.
        """
        _check_host()
        started = time.monotonic()
        binaries, node_binaries, assets = ensure_binaries(), ensure_node_binaries(), ensure_assets()
        self._registry_binary = ensure_registry()
        self.timings["binaries"] = time.monotonic() - started
        self.kubectl = binaries / "kubectl"
        self._acquire_lock()
        try:
            self.started_at = started = time.monotonic()
            stale = _stale_workdirs()
            if stale or NETNS_PATH.exists():
                log.warning("cleaning up after a node cluster that was not stopped: %s", stale)
                problems = _sweep(stale)
                if problems:
                    raise NodeClusterError(
                        "could not clean up an earlier node cluster: " + "; ".join(problems)
                    )
                for directory in stale:
                    shutil.rmtree(directory, ignore_errors=True)
            self._dir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
            self._start(binaries, node_binaries, assets)
            self.timings["node_ready"] = time.monotonic() - started
        except BaseException:
            self.stop()
            raise

    def _acquire_lock(self) -> None:
        """Take the machine-wide lock; wait for another node cluster to stop first."""
        self._lock_file = LOCK_PATH.open("wb")
        deadline = time.monotonic() + self._lock_timeout
        waiting = False
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._lock_file.close()
                    self._lock_file = None
                    raise NodeClusterError(
                        f"another node cluster held {LOCK_PATH} for {self._lock_timeout:.0f} s;"
                        " only one runs on a machine at a time"
                    ) from None
                if not waiting:
                    log.info("waiting for another node cluster on this machine to stop")
                    waiting = True
                time.sleep(1)

    def _start(self, binaries: Path, node_binaries: Path, assets: Path) -> None:
        for name in ("logs", "pki", "images", "etcd", "kubelet", "pod-logs"):
            (self.dir / name).mkdir()
        self._create_netns()
        self._forwarder = _Forwarder(NETNS_PATH, API_PORT)
        self.server = f"https://127.0.0.1:{self._forwarder.port}"
        self._files = self._write_pki(self.dir / "pki")
        self.kubeconfig = self._files["admin.kubeconfig"]
        self.images = write_test_images(self.dir / "images", assets)

        # containerd first: it needs nothing else, and importing images takes a moment.
        self._start_containerd()
        self._start_registry()
        self._start_control_plane(binaries, node_binaries)
        for image in (self.images.pause, self.images.httpecho):
            self.import_image(image.archive)
        self._start_dns(node_binaries)
        self._start_node(node_binaries)
        # Pods are refused until the service-account controller has made `default`.
        self._wait_ready(
            "kube-controller-manager",
            lambda: self._service_account_exists("default", "default"),
            what="done with the default service account",
        )

    def _create_netns(self) -> None:
        """The node's network namespace: loopback plus a veth pair holding the node IP."""
        prefix = NODE_NETWORK.prefixlen
        # `ip netns add` turns /run/netns into a mount point the first time; note whether
        # it was one already, so that stop() can leave the machine as it found it.
        self._netns_dir_existed = NETNS_PATH.parent.exists()
        self._netns_dir_was_mounted = _is_mount_point(NETNS_PATH.parent)
        ip = _tool("ip")
        for command in (
            [ip, "netns", "add", NETNS],
            [ip, "-n", NETNS, "link", "set", "lo", "up"],
            [ip, "-n", NETNS, "link", "add", NODE_LINK, "type", "veth", "peer", NODE_LINK_PEER],
            [ip, "-n", NETNS, "addr", "add", f"{NODE_IP}/{prefix}", "dev", NODE_LINK],
            [ip, "-n", NETNS, "link", "set", NODE_LINK_PEER, "up"],
            [ip, "-n", NETNS, "link", "set", NODE_LINK, "up"],
            # The node's own processes (the apiserver calling an admission webhook) reach
            # Services by ClusterIP: kube-proxy's OUTPUT rules rewrite the address, but
            # the kernel routes a packet before that, and the namespace has no default
            # route. This route is the node's default route of a real cluster.
            [ip, "-n", NETNS, "route", "add", str(SERVICE_CIDR), "dev", NODE_LINK],
        ):
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise NodeClusterError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
        with _in_netns(NETNS_PATH):
            # Routing between the bridge and the node's addresses, and iptables rules
            # (kube-proxy's service NAT) for traffic between pods on the same bridge.
            Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
            Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1")

    def _write_pki(self, pki: Path) -> dict[str, Path]:
        """Write the CA, every certificate and every kubeconfig; return their paths."""
        ca = CertificateAuthority()
        serving = ca.serving(
            [
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
            ],
            ["127.0.0.1", NODE_IP, KUBERNETES_SERVICE_IP],
        )
        kubelet_serving = ca.serving([NODE_NAME], [NODE_IP])
        sa_key = _new_key()
        contents: dict[str, bytes] = {
            "ca.crt": ca.pair.cert,
            "ca.key": ca.pair.key,
            "apiserver.crt": serving.cert,
            "apiserver.key": serving.key,
            "kubelet-serving.crt": kubelet_serving.cert,
            "kubelet-serving.key": kubelet_serving.key,
            "sa.key": _key_pem(sa_key),
            "sa.pub": sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        }
        # Client certificates without a kubeconfig: the apiserver's own identities.
        for name, user, groups in [
            ("front-proxy-client", "front-proxy-client", []),
            ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"]),
        ]:
            pair = ca.client(user, groups)
            contents[f"{name}.crt"], contents[f"{name}.key"] = pair.cert, pair.key
        # The users RBAC's bootstrap policy (and the Node authorizer) know by name, plus
        # CoreDNS, whose role is created at start; all but the admin run in the
        # namespace and reach the apiserver on its loopback address there.
        inside = f"https://127.0.0.1:{API_PORT}"
        for name, user, groups, server in [
            ("admin", "kubernetes-admin", ["system:masters"], self.server),
            ("controller-manager", "system:kube-controller-manager", [], inside),
            ("scheduler", "system:kube-scheduler", [], inside),
            ("kubelet", f"system:node:{NODE_NAME}", ["system:nodes"], inside),
            ("kube-proxy", "system:kube-proxy", [], inside),
            ("coredns", "coredns", [], inside),
        ]:
            pair = ca.client(user, groups)
            contents[f"{name}.crt"], contents[f"{name}.key"] = pair.cert, pair.key
            config = _kubeconfig(server, ca.pair.cert, user, pair)
            contents[f"{name}.kubeconfig"] = yaml.safe_dump(config).encode()
        paths = {}
        for name, data in contents.items():
            path = pki / name
            path.write_bytes(data)
            path.chmod(0o600)
            paths[name] = path
        return paths

    def _start_containerd(self) -> None:
        root = self.dir / "containerd"
        root.mkdir()
        (self.dir / "cni" / "net.d").mkdir(parents=True)
        socket_path = root / "containerd.sock"
        self._ctr = [_tool("ctr"), f"--address={socket_path}", "--namespace=k8s.io"]
        (self.dir / "cni" / "net.d" / "10-modelfleet.conflist").write_text(
            json.dumps(self._cni_config(), indent=2)
        )
        config = root / "config.toml"
        config.write_text(self._containerd_config(root, socket_path))
        self._spawn("containerd", [_tool("containerd"), f"--config={config}"])
        self._wait_ready(
            "containerd",
            lambda: self._ctr_run("version", check=False).returncode == 0,
        )

    def _containerd_config(self, root: Path, socket_path: Path) -> str:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""\
version = 2
root = "{root / "root"}"
state = "{root / "state"}"
# Leave containerd's own OOM score alone: lowering it needs CAP_SYS_RESOURCE.
oom_score = 0
# Storage drivers this machine lacks; left out so they do not log errors at start.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket_path}"

[ttrpc]
  address = ""

[debug]
  level = "warn"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"

[{cri}]
  sandbox_image = "{self.images.pause.name}"
  # The kubelet asks for negative OOM scores for critical pods; without
  # CAP_SYS_RESOURCE runc cannot set them and every container fails to start
  # ("can't get final child's PID from pipe: EOF"), so clamp them to containerd's own.
  restrict_oom_score_adj = true
  # Pod network namespaces under the state directory, not /run/netns, so they are
  # found and removed with the rest of the cluster.
  netns_mounts_under_state_dir = true
  # The streaming server (exec, logs -f, port-forward) listens inside the namespace.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  # The kubelet manages cgroups with cgroupfs; there is no systemd to ask.
  SystemdCgroup = false
  BinaryName = "{_tool("runc")}"
  Root = "{root / "runc"}"

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{self.dir / "cni" / "net.d"}"
  max_conf_num = 1

# The node's registry speaks plain HTTP, so it is its own mirror with an http:// URL.
[{cri}.registry.mirrors."{REGISTRY}"]
  endpoint = ["http://{REGISTRY}"]
"""

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": CNI_BRIDGE,
                    "isGateway": True,
                    # Nothing leaves the namespace, so there is nothing to masquerade.
                    "ipMasq": False,
                    # A pod may reach itself through its own Service.
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(POD_CIDR), "gateway": POD_GATEWAY}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        # Allocations with the cluster, not in /var/lib/cni/networks.
                        "dataDir": str(self.dir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _start_registry(self) -> None:
        """The image registry on the node IP, storing its blobs across clusters.

        The storage outlives the cluster (see :func:`registry_storage`), so pushing an
        image that did not change sends only its manifest; before it starts, the
        registry's garbage collector deletes the manifests no tag names any more and
        the blobs only they used, which keeps the storage to the images last pushed.
        """
        storage = registry_storage()
        storage.mkdir(parents=True, exist_ok=True)
        config = self.dir / "registry.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "version": 0.1,
                    # Every blob the client asks for and lacks is an error to the
                    # registry; they are part of every push, so only worse is logged.
                    "log": {"level": "error", "accesslog": {"disabled": True}},
                    "storage": {
                        "filesystem": {"rootdirectory": str(storage)},
                        "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}},
                    },
                    # The secret signs upload state; one registry needs no shared one.
                    "http": {"addr": REGISTRY, "secret": secrets.token_hex(16)},
                }
            )
        )
        # Without this the registry exports traces to an OpenTelemetry collector on
        # localhost:4318 that is not there, and logs each failure.
        no_tracing = {"OTEL_TRACES_EXPORTER": "none"}
        collected = subprocess.run(
            [str(self._registry_binary), "garbage-collect", "--delete-untagged", str(config)],
            capture_output=True,
            text=True,
            timeout=CTR_TIMEOUT,
            check=False,
            env={**os.environ, **no_tracing},
        )
        if collected.returncode != 0:
            log.warning("registry garbage collection failed: %s", collected.stderr[-2000:])
        # A push that was killed leaves its unfinished uploads; nothing resumes them.
        repositories = storage / "docker" / "registry" / "v2" / "repositories"
        for uploads in repositories.glob("**/_uploads"):
            shutil.rmtree(uploads, ignore_errors=True)
        self._spawn("registry", [str(self._registry_binary), "serve", str(config)], no_tracing)
        self._wait_http("registry", REGISTRY_PORT, "/v2/", None, lambda body: True, host=NODE_IP)

    def _start_control_plane(self, binaries: Path, node_binaries: Path) -> None:
        files = self._files
        etcd_url = f"http://127.0.0.1:{ETCD_PORT}"
        peer_url = f"http://127.0.0.1:{ETCD_PEER_PORT}"
        self._spawn(
            "etcd",
            [
                str(binaries / "etcd"),
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--name={NODE_NAME}",
                f"--initial-cluster={NODE_NAME}={peer_url}",
                # The data is thrown away at exit: skipping fsync makes every write faster.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait_http("etcd", ETCD_PORT, "/health", None, lambda body: '"health":"true"' in body)

        self._spawn(
            "kube-apiserver",
            [
                str(binaries / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                # All addresses of the namespace: loopback for the components and the
                # host's forwarder, the node IP for pods (the `kubernetes` Service).
                "--bind-address=0.0.0.0",
                f"--advertise-address={NODE_IP}",
                f"--secure-port={API_PORT}",
                f"--cert-dir={self.dir / 'pki'}",
                *apiserver_security_flags(files),
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # For logs, exec and port-forward, which the apiserver proxies to the kubelet.
                f"--kubelet-client-certificate={files['apiserver-kubelet-client.crt']}",
                f"--kubelet-client-key={files['apiserver-kubelet-client.key']}",
                f"--kubelet-certificate-authority={files['ca.crt']}",
                "--kubelet-preferred-address-types=InternalIP",
                "--enable-admission-plugins=NodeRestriction",
                "--profiling=false",
            ],
        )
        admin_tls = ssl.create_default_context(cafile=str(files["ca.crt"]))
        admin_tls.load_cert_chain(str(files["admin.crt"]), str(files["admin.key"]))
        self._wait_http("kube-apiserver", API_PORT, "/readyz", admin_tls, lambda b: b == "ok")
        self._api_client = k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

        kcm = files["controller-manager.kubeconfig"]
        self._spawn(
            "kube-controller-manager",
            [
                str(binaries / "kube-controller-manager"),
                f"--kubeconfig={kcm}",
                f"--authentication-kubeconfig={kcm}",
                f"--authorization-kubeconfig={kcm}",
                "--bind-address=127.0.0.1",
                f"--secure-port={CONTROLLER_MANAGER_PORT}",
                f"--cert-dir={self.dir / 'pki' / 'controller-manager'}",
                f"--service-account-private-key-file={files['sa.key']}",
                f"--root-ca-file={files['ca.crt']}",
                "--use-service-account-credentials=true",
                # With a node, every default controller has work: node lifecycle, endpoint
                # slices, jobs, pod garbage collection, certificate signing...
                "--controllers=*",
                f"--cluster-signing-cert-file={files['ca.crt']}",
                f"--cluster-signing-key-file={files['ca.key']}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        scheduler = files["scheduler.kubeconfig"]
        self._spawn(
            "kube-scheduler",
            [
                str(node_binaries / "kube-scheduler"),
                f"--kubeconfig={scheduler}",
                f"--authentication-kubeconfig={scheduler}",
                f"--authorization-kubeconfig={scheduler}",
                "--bind-address=127.0.0.1",
                f"--secure-port={SCHEDULER_PORT}",
                "--leader-elect=false",
            ],
        )
        for name, port in [
            ("kube-controller-manager", CONTROLLER_MANAGER_PORT),
            ("kube-scheduler", SCHEDULER_PORT),
        ]:
            # Self-signed serving certificates; /healthz needs no client identity.
            self._wait_http(name, port, "/healthz", _insecure_tls(), lambda body: body == "ok")

    def _start_dns(self, node_binaries: Path) -> None:
        """CoreDNS on the node IP, answering for cluster.local from the API.

        It runs as a process of the node rather than as a pod: it is ready before the
        first pod starts, needs no image, and the kubelet points pods at the node IP.
        """
        self.kubectl_run("apply", "--filename=-", input=COREDNS_RBAC)
        corefile = self.dir / "Corefile"
        corefile.write_text(
            f""".:53 {{
    bind {DNS_IP}
    errors
    health 127.0.0.1:{DNS_HEALTH_PORT}
    ready 127.0.0.1:{DNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self._files["coredns.kubeconfig"]}
        pods insecure
        ttl 5
    }}
    cache 5
}}
"""
        )
        self._spawn("coredns", [str(node_binaries / "coredns"), f"-conf={corefile}"])
        self._wait_http("coredns", DNS_READY_PORT, "/ready", None, lambda body: body == "OK")

    def _start_node(self, node_binaries: Path) -> None:
        files = self._files
        kubelet_config = self.dir / "kubelet.yaml"
        kubelet_config.write_text(yaml.safe_dump(self._kubelet_config()))
        self._spawn(
            "kubelet",
            [
                str(node_binaries / "kubelet"),
                f"--config={kubelet_config}",
                f"--kubeconfig={files['kubelet.kubeconfig']}",
                f"--root-dir={self.dir / 'kubelet'}",
                f"--node-ip={NODE_IP}",
                f"--hostname-override={NODE_NAME}",
            ],
        )
        proxy_config = self.dir / "kube-proxy.yaml"
        proxy_config.write_text(yaml.safe_dump(self._kube_proxy_config()))
        self._spawn("kube-proxy", [str(node_binaries / "kube-proxy"), f"--config={proxy_config}"])
        self._wait_http("kubelet", KUBELET_HEALTHZ_PORT, "/healthz", None, lambda b: b == "ok")
        self._wait_ready("kubelet", self._node_ready, timeout=NODE_READY_TIMEOUT, what="Node Ready")
        self._wait_http("kube-proxy", KUBE_PROXY_HEALTHZ_PORT, "/healthz", None, lambda b: True)

    def _kubelet_config(self) -> dict[str, Any]:
        files = self._files
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # 1.35 refuses to run on cgroup v1 unless told to, and these machines mount
            # the v1 hierarchies (with cgroup2 only at /sys/fs/cgroup/unified).
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.dir / 'containerd' / 'containerd.sock'}",
            "failSwapOn": False,
            "address": NODE_IP,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "tlsCertFile": str(files["kubelet-serving.crt"]),
            "tlsPrivateKeyFile": str(files["kubelet-serving.key"]),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(files["ca.crt"])},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [DNS_IP],
            # The host's resolv.conf names servers the namespace cannot reach; pods
            # with dnsPolicy ClusterFirst need only the cluster DNS.
            "resolvConf": "",
            # Lowering its own OOM score needs CAP_SYS_RESOURCE, which is not there.
            "oomScoreAdj": 0,
            # The machine is shared with builds and other tests: evict only when it
            # is truly out of memory or disk, never because of someone else's files.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
                "imagefs.inodesFree": "1%",
            },
            # Imported images cannot be pulled again, so never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "podLogsDir": str(self.dir / "pod-logs"),
            "volumePluginDir": str(self.dir / "kubelet" / "volume-plugins"),
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            # Graceful node shutdown would ask systemd-logind for an inhibitor lock.
            "shutdownGracePeriod": "0s",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
        }

    def _kube_proxy_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self._files["kube-proxy.kubeconfig"])},
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": str(POD_CIDR),
            "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}",
            "metricsBindAddress": f"127.0.0.1:{KUBE_PROXY_METRICS_PORT}",
            "nodePortAddresses": ["primary"],
            "oomScoreAdj": 0,
            # The conntrack table's size and timeouts are settings of the whole machine,
            # which a process in a network namespace may not change: leave them.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            # Pick up new Services within a second rather than kube-proxy's default.
            "iptables": {"minSyncPeriod": "1s"},
        }

    def _service_account_exists(self, namespace: str, name: str) -> bool:
        try:
            k8s_client.CoreV1Api(self.api_client).read_namespaced_service_account(name, namespace)
        except k8s_client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def _node_ready(self) -> bool:
        try:
            node = k8s_client.CoreV1Api(self.api_client).read_node(NODE_NAME)
        except k8s_client.ApiException as error:
            if error.status == 404:
                return False
            raise
        conditions = node.status.conditions or []
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    # ------------------------------------------------------------ processes and health

    def _log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        """Start ``command`` inside the node's network namespace, logging to logs/NAME.log.

        nsenter enters only the network namespace (``ip netns exec`` would also give
        the process a mount namespace of its own, and containerd would then not see
        the volumes the kubelet mounts), then execs the command in place, so the PID is
        the component's own. ``env`` adds to the environment.
        """
        environment = {**os.environ, "PATH": _SEARCH_PATH, **(env or {})}
        environment.pop("KUBECONFIG", None)
        with self._log(name).open("wb") as out:
            process = subprocess.Popen(
                [_tool("nsenter"), f"--net={NETNS_PATH}", "--", *command],
                cwd=self.dir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # A process group of its own, so stop() can signal it and its children.
                start_new_session=True,
                preexec_fn=set_parent_death_signal,
            )
        self._processes[name] = process
        record = _Process.of(process.pid)
        if record is not None:
            self._seen.add(record)

    def _exited(self, name: str) -> NodeClusterError | None:
        process = self._processes[name]
        if process.poll() is None:
            return None
        return NodeClusterError(
            f"{name} exited with code {process.returncode}; last lines of "
            f"{self._log(name)}:\n{_tail(self._log(name))}"
        )

    def _wait_ready(
        self,
        name: str,
        ready: Callable[[], bool],
        timeout: float = READY_TIMEOUT,
        what: str = "ready",
        last: Callable[[], str] | None = None,
    ) -> None:
        """Poll ``ready()`` until true; fail early if the component exits."""
        started = time.monotonic()
        while True:
            error = self._exited(name)
            if error is not None:
                raise error
            if ready():
                log.info("%s %s after %.1f s", name, what, time.monotonic() - started)
                return
            if time.monotonic() - started > timeout:
                detail = f" (last answer: {last()})" if last else ""
                raise NodeClusterError(
                    f"{name} was not {what} after {timeout:.0f} s{detail}; last lines of "
                    f"{self._log(name)}:\n{_tail(self._log(name))}"
                )
            time.sleep(0.2)

    def _wait_http(
        self,
        name: str,
        port: int,
        path: str,
        tls: ssl.SSLContext | None,
        healthy: Callable[[str], bool],
        host: str = "127.0.0.1",
    ) -> None:
        """Wait until GET ``path`` on ``port`` inside the namespace answers 200, healthy."""
        answer = ["no answer yet"]

        def probe() -> bool:
            try:
                status, body = _netns_get(NETNS_PATH, port, path, tls, host)
            except (OSError, ssl.SSLError, http.client.HTTPException) as error:
                answer[0] = str(error)
                return False
            answer[0] = f"HTTP {status}: {body[-2000:]}"
            return status == 200 and healthy(body)

        self._wait_ready(name, probe, what="healthy", last=lambda: answer[0])

    def check_alive(self) -> None:
        """Raise NodeClusterError if a component has exited since start-up."""
        for name in self._processes:
            error = self._exited(name)
            if error is not None:
                raise error

    def processes(self) -> list[_Process]:
        """Every live process of the cluster: components, shims and containers."""
        found = {
            *(p for p in map(_Process.of, (p.pid for p in self._processes.values())) if p),
            *_processes_in_netns(NETNS_PATH),
            *_processes_in_cgroups(),
        }
        self._seen |= found
        return sorted(found, key=lambda p: p.pid)

    def rss_bytes(self) -> int:
        """The resident memory of all of the cluster's processes, summed."""
        return sum(process.rss() for process in self.processes())

    # ------------------------------------------------------------------ images, kubectl

    def _ctr_run(
        self, *args: str, check: bool = True, timeout: float = CTR_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self._ctr, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise NodeClusterError(
                f"`ctr {' '.join(args)}` exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def import_image(self, archive: Path) -> None:
        """Import an OCI (or Docker) image archive into the node's containerd.

        The image keeps the name in the archive's ``io.containerd.image.name``
        annotation (see ``images/oci.py``); pods refer to it by that name with
        ``imagePullPolicy: Never`` or ``IfNotPresent``.
        """
        started = time.monotonic()
        self._ctr_run("images", "import", str(archive))
        log.info("imported %s in %.1f s", archive.name, time.monotonic() - started)

    def push_image(self, store: oci.Store, image: oci.Image, repository: str | None = None) -> str:
        """Push ``image`` from ``store`` to the node's registry; return its full name.

        The name is ``<registry>/<repository>:<tag>`` (the repository defaults to the
        image's own, e.g. ``10.222.0.1:5000/modelfleet/operator:0.1.0``); pods name it
        so, and the kubelet pulls it on first use like any image. Blobs the registry
        has from an earlier push are not sent again.
        """
        started = time.monotonic()
        own_repository, _, tag = image.name.rpartition(":")
        repository = repository or own_repository
        registry = Registry(
            REGISTRY,
            insecure=True,
            connect=lambda address: _netns_connect(NETNS_PATH, address, timeout=30),
        )
        registry.push(store, image, repository, tag)
        name = f"{REGISTRY}/{repository}:{tag}"
        log.info(
            "pushed %s (%.0f MB) in %.1f s", name, image.size / 1e6, time.monotonic() - started
        )
        return name

    def load_image(self, store: oci.Store, image: oci.Image, name: str) -> None:
        """Put ``image`` into containerd under ``name`` directly, without the registry.

        The archive is streamed from the store into ``ctr images import``, so nothing
        is copied first. Pods then find it under ``name`` as if it had been pulled.
        """
        started = time.monotonic()
        with subprocess.Popen(
            [*self._ctr, "images", "import", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ) as ctr:
            assert ctr.stdin is not None and ctr.stdout is not None
            try:
                store.write_archive(image, ctr.stdin, name)
            finally:
                ctr.stdin.close()
            output = ctr.stdout.read().decode(errors="replace")
        if ctr.returncode != 0:
            raise NodeClusterError(f"`ctr images import -` of {name} failed:\n{output}")
        log.info("loaded %s in %.1f s", name, time.monotonic() - started)

    def pull_image(self, name: str, timeout: float = 900.0) -> None:
        """Have containerd pull ``name`` now (as the kubelet would for a pod), and unpack it.

        For a large image this is what a pod would otherwise wait for; doing it first
        makes the pod's own start time the container's alone.
        """
        started = time.monotonic()
        plain_http = ["--plain-http"] if name.startswith(f"{REGISTRY}/") else []
        # ctr fetches the blobs itself (containerd only stores them), so it runs in the
        # namespace, where the registry is.
        command = [_tool("nsenter"), f"--net={NETNS_PATH}", "--", *self._ctr]
        command += ["images", "pull", *plain_http, name]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise NodeClusterError(f"`ctr images pull {name}` failed:\n{result.stderr[-4000:]}")
        log.info("pulled %s in %.1f s", name, time.monotonic() - started)

    def image_names(self) -> list[str]:
        """The names of the images in the node's containerd (CRI namespace)."""
        return self._ctr_run("images", "list", "--quiet").stdout.split()

    @contextlib.contextmanager
    def port_forward(self, namespace: str, target: str, port: int) -> Iterator[int]:
        """``kubectl port-forward`` of ``target`` (``pod/x``, ``svc/y``) port ``port`` to a
        free port on 127.0.0.1; yields that port, stops the forward on exit."""
        command = [
            str(self.kubectl),
            f"--kubeconfig={self.kubeconfig}",
            f"--namespace={namespace}",
            "port-forward",
            "--address=127.0.0.1",
            target,
            f":{port}",
        ]
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as forward:
            try:
                yield _forwarded_port(forward)
            finally:
                forward.terminate()
                forward.wait(timeout=10)

    # ------------------------------------------------------------------------- stop

    def stop(self) -> list[str]:
        """Stop everything, remove every trace; return (and keep in ``leftovers``) the rest.

        Containers are killed through containerd first: deleting pods gracefully
        would take the kubelet 20-50 s.
        """
        started = time.monotonic()
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
        with contextlib.suppress(Exception):
            self.processes()  # remember the shims and containers, to check they are gone
        if "kubelet" in self._processes:
            # First, so that it does not restart the containers killed next.
            stop_group(self._processes.pop("kubelet"))
        if "containerd" in self._processes and self._processes["containerd"].poll() is None:
            self._kill_containers()
        for name in reversed(list(self._processes)):
            stop_group(self._processes.pop(name))
        if self._forwarder is not None:
            self._forwarder.close()
            self._forwarder = None
        problems: list[str] = []
        if self._dir is not None:
            self._save_logs()
            problems = _sweep([self._dir])
            shutil.rmtree(self._dir, ignore_errors=True)
        self._restore_netns_dir()
        problems += [f"process {p.describe()}" for p in self._seen if p.alive()]
        if self._dir is not None and self._dir.exists():
            problems.append(f"directory {self._dir}")
        self._dir = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None
        self.leftovers = sorted(set(problems))
        if self.leftovers:
            log.warning("the node cluster left behind: %s", "; ".join(self.leftovers))
        log.info("node cluster stopped in %.1f s", time.monotonic() - started)
        return self.leftovers

    def _save_logs(self) -> None:
        if self._keep_logs is None or self._dir is None:
            return
        target = self._keep_logs / f"node-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            for name in ("logs", "pod-logs"):
                if (self.dir / name).is_dir():
                    shutil.copytree(self.dir / name, target / name, symlinks=True)
        except OSError as error:
            # The logs are a help for debugging; they must not stop the teardown.
            log.warning("could not copy the node cluster's logs to %s: %s", target, error)
            return
        log.info("node cluster logs copied to %s", target)

    def _restore_netns_dir(self) -> None:
        """Undo what `ip netns add` did to /run/netns, if it is empty again."""
        directory = NETNS_PATH.parent
        with contextlib.suppress(OSError):
            if any(directory.iterdir()):
                return  # another namespace lives there now: leave it as it is
            if not self._netns_dir_was_mounted and _is_mount_point(directory):
                _libc.umount2(str(directory).encode(), _MNT_DETACH)
            if not self._netns_dir_existed:
                directory.rmdir()

    def _kill_containers(self) -> None:
        """SIGKILL every task through containerd and delete it, so its shim exits."""
        listed = self._ctr_run("tasks", "list", "--quiet", check=False, timeout=30)
        tasks = listed.stdout.split() if listed.returncode == 0 else []
        for task in tasks:
            self._ctr_run("tasks", "kill", "--all", "--signal=SIGKILL", task, check=False)
        for task in tasks:
            # --force: a task that has not yet exited is killed and deleted all the same.
            self._ctr_run("tasks", "delete", "--force", task, check=False, timeout=30)


def _tool(name: str) -> str:
    """The full path of a host tool; see _check_host for the hint when one is missing."""
    path = shutil.which(name, path=_SEARCH_PATH)
    if path is None:
        raise NodeClusterError(f"`{name}` is not installed; scripts/setup.sh installs it")
    return path


def _check_host() -> None:
    """Fail early, with a hint, where the node cannot run."""
    if os.geteuid() != 0:
        raise NodeClusterError("the node cluster needs root (network namespaces, mounts)")
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool, path=_SEARCH_PATH) is None]
    missing += [f"{CNI_BIN_DIR}/{p}" for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).is_file()]
    if missing:
        raise NodeClusterError(
            f"the node cluster needs {', '.join(missing)}; scripts/setup.sh installs them "
            "(containerd, runc, containernetworking-plugins, iptables)"
        )
    kubelet_socket = DEVICE_PLUGINS_DIR / "kubelet.sock"
    if kubelet_socket.is_socket() and not _socket_is_dead(kubelet_socket):
        raise NodeClusterError(
            f"another kubelet serves {kubelet_socket}: the node cluster cannot share "
            "a machine with a real node"
        )


COREDNS_RBAC = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: coredns
"""


# ---------------------------------------------------------------------------------- CLI


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM, so a second Ctrl-C does not cut the teardown short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Build if needed, start a node cluster, print how to reach it, wait for a signal."""
    parser = argparse.ArgumentParser(
        description="Start a one-node Kubernetes cluster (control plane, containerd, "
        "kubelet, kube-proxy, CoreDNS, an image registry) in a network namespace, with "
        "modelfleet's images in its registry and the KubeRay operator running, until "
        "interrupted."
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="only the cluster: no product images, no KubeRay (faster)",
    )
    parser.add_argument(
        "--load",
        action="store_true",
        help="load the product images into containerd instead of pushing them to the "
        "node's registry",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cluster = NodeCluster()
    status = 0
    try:
        with _interrupt_on_signals():
            cluster.start()
            lines = [f"KUBECONFIG={cluster.kubeconfig}", f"KUBECTL={cluster.kubectl}"]
            if not args.bare:
                lines += _provide_product(cluster, via_registry=not args.load)
            # Printed together once everything is ready, so a script may read them all.
            for line in lines:
                print(line, flush=True)
            log.info(
                "node %s Ready after %.1f s (apiserver %s); test image %s; Ctrl-C stops it",
                cluster.node_name,
                cluster.timings["node_ready"],
                cluster.server,
                cluster.images.httpecho.name,
            )
            while True:
                cluster.check_alive()
                time.sleep(1)
    except KeyboardInterrupt:
        log.info("stopping")
    except ControlPlaneError as error:
        log.error("%s", error)
        status = 1
    finally:
        with _signals_ignored():
            if cluster.stop():
                status = 1
    return status


def _provide_product(cluster: NodeCluster, *, via_registry: bool) -> list[str]:
    """The product's images and KubeRay on ``cluster``; the lines that say how to use them."""
    from tests.cluster import kuberay  # it builds on this module
    from tests.helm.binary import ensure_helm

    images = provide_product_images(cluster, via_registry=via_registry)
    kuberay.install(cluster, Builder().store)
    return [
        f"HELM={ensure_helm()}",
        f"IMAGES={images.registry or 'loaded'}",
        f"CHART_SET={' '.join(images.chart_set())}",
    ]


if __name__ == "__main__":
    sys.exit(main())


def _forwarded_port(forward: subprocess.Popen[str], timeout: float = 30.0) -> int:
    """The local port from kubectl port-forward's "Forwarding from 127.0.0.1:N" line."""
    assert forward.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(forward.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                break
            line = forward.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) ->", line)
            if match:
                return int(match.group(1))
    raise NodeClusterError(f"kubectl port-forward did not start: {''.join(seen)}")

"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager.

The binaries are built from the pinned Go wrapper modules in ``tests/cluster/gomod`` (see
docs/control-plane.md) and cached outside the repository, keyed by version. There is no
kubelet, so pods are never run; everything that only needs the API (CRDs, CEL validation,
server-side apply, RBAC, garbage collection, namespace deletion) behaves as in a cluster.

Run ``tests/cluster/up`` (or ``python -m tests.cluster.controlplane``) to start one by hand.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import fcntl
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from modelfleet_serving.processes import free_ports, set_parent_death_signal

from tests.helpers import stop_group

log = logging.getLogger(__name__)

GOMOD_DIR = Path(__file__).resolve().parent / "gomod"
KUBERNETES_MODULE = "k8s.io/kubernetes"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")
BINARIES = ("etcd", *KUBE_COMMANDS)

KUBERAY_MODULE = "github.com/ray-project/kuberay/ray-operator"
KUBERAY_VERSION = "v1.5.0"
KUBERAY_CRDS = ("ray.io_rayclusters.yaml", "ray.io_rayservices.yaml", "ray.io_rayjobs.yaml")

SERVICE_CLUSTER_IP_RANGE = ipaddress.ip_network("10.0.0.0/24")
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Controllers that act on API objects alone. Node, pod-lifecycle and volume controllers
# are left out: without a kubelet they only burn CPU on a two-core machine.
CONTROLLERS = (
    "garbage-collector-controller",
    "clusterrole-aggregation-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
)

# Time limits, in seconds, generous enough for a loaded two-core machine.
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0
KUBECTL_TIMEOUT = 120.0


class ControlPlaneError(RuntimeError):
    """A component failed to build, start or answer; the message says which and why."""


# --------------------------------------------------------------------------- build


def module_version(gomod: Path, module: str) -> str:
    """Return the version of ``module`` required by the go.mod file at ``gomod``."""
    match = re.search(
        rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", gomod.read_text(), re.MULTILINE
    )
    if match is None:
        raise ControlPlaneError(f"{gomod} does not require {module}")
    return match.group(1)


def versions() -> tuple[str, str]:
    """The pinned (Kubernetes, etcd) versions, read from the wrapper go.mod files."""
    return (
        module_version(GOMOD_DIR / "kubernetes" / "go.mod", KUBERNETES_MODULE),
        module_version(GOMOD_DIR / "etcd" / "go.mod", ETCD_MODULE),
    )


def cache_root() -> Path:
    """``${MODELFLEET_CACHE:-${XDG_CACHE_HOME:-~/.cache}}/modelfleet``."""
    base = os.environ.get("MODELFLEET_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "modelfleet"


def bin_dir() -> Path:
    """Where the binaries of the pinned versions live (or will live)."""
    kube, etcd = versions()
    return cache_root() / "controlplane" / f"k8s-{kube}-etcd-{etcd}" / "bin"


def _version_ldflags(version: str) -> str:
    """Linker flags that stamp ``version`` into the binaries, as the upstream build does.

    Without them ``kubectl version`` and the apiserver's /version report v0.0.0, and
    clients that gate features on the server version misbehave.
    """
    major, minor = version.removeprefix("v").split(".")[:2]
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
        ]
    return " ".join(flags)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise ControlPlaneError(
            "the Go toolchain (`go`) is needed to build the test control plane; "
            "install Go >= 1.25 and put it on PATH"
        )
    return go


def _tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


def _go_build(
    module_dir: Path,
    output: str,
    packages: Sequence[str],
    ldflags: str,
    env: Mapping[str, str] | None = None,
) -> None:
    """Build ``packages`` of the wrapper module in ``module_dir``.

    ``output`` is go build's ``-o``: a file name, or a directory ending in ``/`` where
    each command gets the name of its package directory. ``env`` adds to the
    environment, e.g. ``CGO_ENABLED=0`` for static binaries.
    """
    # -buildvcs=false: a main package of a wrapper module would otherwise be stamped
    # with the repository's git state, which fails where git refuses the checkout
    # (e.g. under sudo, owned by another user) and changes nothing that matters.
    command = [_go(), "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", output]
    command += packages
    log.info("building %s (minutes on a cold Go build cache)", " ".join(packages))
    # go build prints nothing but errors, so its output is small enough to keep in memory.
    result = subprocess.run(
        command,
        cwd=module_dir,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        output_tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise ControlPlaneError(
            f"`{' '.join(command)}` failed in {module_dir} (exit {result.returncode}):\n"
            f"{output_tail}"
        )


def build_cached(target: Path, names: Sequence[str], build: Callable[[Path], None]) -> Path:
    """Return ``target``, a directory holding the files ``names``, building it if needed.

    ``build(staging)`` writes the files into an empty staging directory, which is
    renamed to ``target`` when complete, so a half-built directory is never seen. A
    file lock beside ``target`` makes a concurrent caller wait for the first build
    instead of starting a second one.
    """
    if all((target / name).is_file() for name in names):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all((target / name).is_file() for name in names):
            return target  # another process finished the build while we waited
        staging = Path(tempfile.mkdtemp(prefix="bin.tmp-", dir=target.parent))
        try:
            build(staging)
            missing = [name for name in names if not (staging / name).is_file()]
            if missing:
                raise ControlPlaneError(f"the build did not produce {', '.join(missing)}")
            # An incomplete directory can only be left by hand or by an older layout.
            shutil.rmtree(target, ignore_errors=True)
            staging.chmod(0o755)  # mkdtemp makes it private to its creator
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_binaries() -> Path:
    """Return the directory with etcd, kube-apiserver, kube-controller-manager and kubectl.

    They are built on first use only (see :func:`build_cached`).
    """
    kube_version, _ = versions()

    def build(staging: Path) -> None:
        # Named explicitly: by default go would call it `server`, after the package.
        _go_build(GOMOD_DIR / "etcd", f"{staging}/etcd", [ETCD_MODULE], ldflags="")
        _go_build(
            GOMOD_DIR / "kubernetes",
            f"{staging}/",
            [f"{KUBERNETES_MODULE}/cmd/{name}" for name in KUBE_COMMANDS],
            ldflags=_version_ldflags(kube_version),
        )

    return build_cached(bin_dir(), BINARIES, build)


# ------------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert: bytes
    key: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256 keys are generated in microseconds, unlike RSA; every component accepts them.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]],
) -> bytes:
    """A certificate for ``key``, signed by ``issuer`` (self-signed when None), valid 10 days."""
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=10))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


class CertificateAuthority:
    """A throwaway CA that signs the serving certificate and the client certificates."""

    def __init__(self) -> None:
        self._key = _new_key()
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelfleet-test-ca")])
        cert = _certificate(
            self._name,
            self._key,
            None,
            [
                (x509.BasicConstraints(ca=True, path_length=None), True),
                (_key_usage(cert_sign=True), True),
            ],
        )
        self.pair = KeyPair(cert, _key_pem(self._key))

    def serving(self, dns_names: Sequence[str], ips: Sequence[str]) -> KeyPair:
        """A TLS server certificate for the given names and IP addresses."""
        sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        return self._leaf(
            dns_names[0],
            [],
            [
                (x509.SubjectAlternativeName(sans), False),
                (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            ],
        )

    def client(self, user: str, groups: Sequence[str] = ()) -> KeyPair:
        """A client certificate; the apiserver reads the user from CN and groups from O."""
        return self._leaf(
            user, groups, [(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)]
        )

    def _leaf(
        self,
        common_name: str,
        organizations: Sequence[str],
        extensions: Sequence[tuple[x509.ExtensionType, bool]],
    ) -> KeyPair:
        key = _new_key()
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
            + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        )
        extensions = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(cert_sign=False), True),
            *extensions,
        ]
        return KeyPair(
            _certificate(subject, key, (self._name, self._key), extensions), _key_pem(key)
        )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# ---------------------------------------------------------------------------- helpers


def _kubeconfig(server: str, ca: bytes, user: str, credentials: KeyPair) -> dict[str, Any]:
    """A kubeconfig that reaches ``server`` with a client certificate; credentials inline."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "modelfleet-test",
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(credentials.cert),
                    "client-key-data": b64(credentials.key),
                },
            }
        ],
        "contexts": [
            {"name": "modelfleet-test", "context": {"cluster": "modelfleet-test", "user": user}}
        ],
        "current-context": "modelfleet-test",
    }


def run_kubectl(
    kubectl: Path,
    kubeconfig: Path,
    *args: str,
    input: str | None = None,
    check: bool = True,
    timeout: float = KUBECTL_TIMEOUT,
    cache_dir: Path,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl with ``kubeconfig`` and return the finished process (text output).

    ``cache_dir`` holds kubectl's discovery cache. It must be private to one control
    plane: ports are reused by later control planes with other CRDs, and a shared cache
    (the default is under ~/.kube) could answer with their resources.
    With ``check`` a non-zero exit raises ControlPlaneError carrying kubectl's output.
    """
    command = [str(kubectl), f"--kubeconfig={kubeconfig}", f"--cache-dir={cache_dir}", *args]
    result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise ControlPlaneError(
            f"`kubectl {' '.join(args)}` exited with {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    return result


# ------------------------------------------------------------------------ control plane


def apiserver_security_flags(files: Mapping[str, Path]) -> list[str]:
    """kube-apiserver flags for TLS, client certificates, service accounts and RBAC.

    ``files`` maps the names that :meth:`ControlPlane._write_pki` writes (``ca.crt``,
    ``apiserver.crt``, ``sa.key``, ...) to their paths.
    """
    return [
        f"--tls-cert-file={files['apiserver.crt']}",
        f"--tls-private-key-file={files['apiserver.key']}",
        f"--client-ca-file={files['ca.crt']}",
        # The front-proxy (request header) settings are published for delegated
        # authentication; without them the controller-manager logs an error
        # every few seconds about the missing request-header CA.
        f"--requestheader-client-ca-file={files['ca.crt']}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={files['front-proxy-client.crt']}",
        f"--proxy-client-key-file={files['front-proxy-client.key']}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={files['sa.pub']}",
        f"--service-account-signing-key-file={files['sa.key']}",
        "--authorization-mode=Node,RBAC",
    ]


class TestCluster:
    """What the apiserver-only control plane and the node cluster share: a temporary
    directory, an admin API client and kubectl, valid between start() and stop(), and
    use as a context manager (started on entry, stopped on exit)."""

    __test__ = False  # not a pytest test class, despite its name

    # Set by start(); reading them earlier is a programming error.
    kubeconfig: Path
    kubectl: Path
    server: str
    _dir: Path | None = None
    _api_client: k8s_client.ApiClient | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    @property
    def dir(self) -> Path:
        """The temporary directory of this cluster."""
        assert self._dir is not None, f"the {type(self).__name__} is not started"
        return self._dir

    @property
    def api_client(self) -> k8s_client.ApiClient:
        """A ``kubernetes.client.ApiClient`` for the admin user."""
        assert self._api_client is not None, f"the {type(self).__name__} is not started"
        return self._api_client

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def kubectl_run(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = KUBECTL_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as the admin user; see :func:`run_kubectl`."""
        return run_kubectl(
            self.kubectl,
            self.kubeconfig,
            *args,
            input=input,
            check=check,
            timeout=timeout,
            cache_dir=self.dir / "kubectl-cache",
        )


class ControlPlane(TestCluster):
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1, as a context manager.

    Everything lives in a temporary directory (data, certificates, kubeconfigs and one log
    file per component under ``logs/``) that is removed on exit, after every process
    group has been stopped. Attributes, valid inside the ``with`` block:

    - ``kubeconfig``: path of an admin kubeconfig (user ``kubernetes-admin``, group
      ``system:masters``);
    - ``kubectl``: path of the matching kubectl binary;
    - ``server``: the apiserver URL;
    - ``api_client``: a ``kubernetes.client.ApiClient`` for the admin user.
    """

    def __init__(self, binaries: Path | None = None) -> None:
        self._binaries = binaries
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._dir: Path | None = None
        self._api_client: k8s_client.ApiClient | None = None

    def start(self) -> None:
        """Start the three components and wait until each is healthy.

        On any failure everything started so far is stopped before the error is raised.
        """
        binaries = self._binaries or ensure_binaries()
        self.kubectl = binaries / "kubectl"
        self._dir = Path(tempfile.mkdtemp(prefix="modelfleet-controlplane-"))
        try:
            self._start(binaries)
        except BaseException:
            self.stop()
            raise

    def _start(self, binaries: Path) -> None:
        etcd_port, peer_port, api_port, kcm_port = free_ports(4)
        self.server = f"https://127.0.0.1:{api_port}"
        pki = self.dir / "pki"
        pki.mkdir()
        (self.dir / "logs").mkdir()
        files = self._write_pki(pki)

        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                str(binaries / "etcd"),
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                "--name=modelfleet-test",
                f"--initial-cluster=modelfleet-test={peer_url}",
                # The data is thrown away at exit: skipping fsync makes every write faster.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait_healthy(
            "etcd", f"{etcd_url}/health", None, lambda body: '"health":"true"' in body
        )

        self._spawn(
            "kube-apiserver",
            [
                str(binaries / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={pki}",
                *apiserver_security_flags(files),
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # The apiserver refuses loopback addresses in the endpoints of the
                # `kubernetes` Service; nothing in-cluster dials it without a kubelet.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        self._wait_healthy(
            "kube-apiserver",
            f"{self.server}/readyz",
            self._admin_tls(files),
            lambda body: body == "ok",
        )

        self._spawn(
            "kube-controller-manager",
            [
                str(binaries / "kube-controller-manager"),
                f"--kubeconfig={files['controller-manager.kubeconfig']}",
                f"--authentication-kubeconfig={files['controller-manager.kubeconfig']}",
                f"--authorization-kubeconfig={files['controller-manager.kubeconfig']}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={pki / 'controller-manager'}",
                f"--service-account-private-key-file={files['sa.key']}",
                f"--root-ca-file={files['ca.crt']}",
                "--use-service-account-credentials=true",
                f"--controllers={','.join(CONTROLLERS)}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        # Its serving certificate is self-signed; /healthz needs no client identity.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait_healthy(
            "kube-controller-manager",
            f"https://127.0.0.1:{kcm_port}/healthz",
            insecure,
            lambda body: body == "ok",
        )

        self.kubeconfig = files["admin.kubeconfig"]
        self._api_client = k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def _write_pki(self, pki: Path) -> dict[str, Path]:
        """Write the CA, certificates, service-account keys and kubeconfigs; return paths."""
        ca = CertificateAuthority()
        service_ip = str(next(SERVICE_CLUSTER_IP_RANGE.hosts()))
        serving = ca.serving(
            [
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ["127.0.0.1", service_ip],
        )
        sa_key = _new_key()
        sa_pub = sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        contents: dict[str, bytes] = {
            "ca.crt": ca.pair.cert,
            "apiserver.crt": serving.cert,
            "apiserver.key": serving.key,
            "sa.key": _key_pem(sa_key),
            "sa.pub": sa_pub,
        }
        front_proxy = ca.client("front-proxy-client")
        contents["front-proxy-client.crt"] = front_proxy.cert
        contents["front-proxy-client.key"] = front_proxy.key
        for name, user, groups in [
            ("admin", "kubernetes-admin", ["system:masters"]),
            # RBAC's bootstrap policy binds this user name to the controller-manager role.
            ("controller-manager", "system:kube-controller-manager", []),
        ]:
            pair = ca.client(user, groups)
            contents[f"{name}.crt"], contents[f"{name}.key"] = pair.cert, pair.key
            config = _kubeconfig(self.server, ca.pair.cert, user, pair)
            contents[f"{name}.kubeconfig"] = yaml.safe_dump(config).encode()
        paths = {}
        for name, data in contents.items():
            path = pki / name
            path.write_bytes(data)
            path.chmod(0o600)
            paths[name] = path
        return paths

    @staticmethod
    def _admin_tls(files: dict[str, Path]) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(files["ca.crt"]))
        context.load_cert_chain(str(files["admin.crt"]), str(files["admin.key"]))
        return context

    def _log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def _spawn(self, name: str, command: list[str]) -> None:
        with self._log(name).open("wb") as out:
            self._processes[name] = subprocess.Popen(
                command,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # A process group of its own, so stop() can signal it and any children.
                start_new_session=True,
                preexec_fn=set_parent_death_signal,
            )

    def _wait_healthy(
        self,
        name: str,
        url: str,
        tls: ssl.SSLContext | None,
        healthy: Callable[[str], bool],
    ) -> None:
        """Poll ``url`` until ``healthy(body)``; fail early if the process exits."""
        process = self._processes[name]
        started = time.monotonic()
        deadline = started + READY_TIMEOUT
        last = "no answer yet"
        while True:
            if process.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {process.returncode} during start-up; "
                    f"last lines of {self._log(name)}:\n{_tail(self._log(name))}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5, context=tls) as response:
                    body = response.read().decode(errors="replace").strip()
                if healthy(body):
                    log.info("%s healthy after %.1f s", name, time.monotonic() - started)
                    return
                last = body
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code}: {error.read().decode(errors='replace')[-2000:]}"
            except (OSError, ssl.SSLError) as error:
                last = str(error)
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{name} was not healthy at {url} after {READY_TIMEOUT:.0f} s "
                    f"(last answer: {last}); last lines of {self._log(name)}:\n"
                    f"{_tail(self._log(name))}"
                )
            time.sleep(0.2)

    def check_alive(self) -> None:
        """Raise ControlPlaneError if a component has exited since start-up."""
        for name, process in self._processes.items():
            if process.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {process.returncode}; "
                    f"last lines of {self._log(name)}:\n{_tail(self._log(name))}"
                )

    def stop(self) -> None:
        """Stop every component (newest first) and remove the temporary directory."""
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
        for name in reversed(list(self._processes)):
            stop_group(self._processes.pop(name), timeout=STOP_TIMEOUT)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


# ------------------------------------------------------------------------------ KubeRay


def kuberay_crd_dir() -> Path:
    """``config/crd/bases`` of the pinned KubeRay module, downloaded to the module cache.

    ``go mod download`` answers from the module cache without network once it is there.
    """
    command = [_go(), "mod", "download", "-json", f"{KUBERAY_MODULE}@{KUBERAY_VERSION}"]
    # Run outside any module, so no go.mod around the caller's directory interferes.
    result = subprocess.run(
        command, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"`{' '.join(command)}` failed:\n{result.stdout}{result.stderr}")
    return Path(json.loads(result.stdout)["Dir"]) / "config" / "crd" / "bases"


def install_kuberay_crds(kubeconfig: Path, kubectl: Path | None = None) -> None:
    """Install the RayCluster, RayService and RayJob CRDs and wait until they are served.

    ``kubectl`` defaults to the cached build. The CRDs are about a megabyte each, over
    the 256 KiB limit of the annotation that client-side apply writes, hence
    server-side apply.
    """
    kubectl = kubectl or ensure_binaries() / "kubectl"
    files = [f"--filename={kuberay_crd_dir() / name}" for name in KUBERAY_CRDS]
    with tempfile.TemporaryDirectory(prefix="modelfleet-kubectl-cache-") as cache:
        run_kubectl(
            kubectl,
            kubeconfig,
            "apply",
            "--server-side",
            "--field-manager=modelfleet-tests",
            *files,
            cache_dir=Path(cache),
        )
        # Establishing three megabyte-sized CRDs takes seconds on an idle machine but
        # minutes when vLLM replicas load the cores, hence the generous limit.
        run_kubectl(
            kubectl,
            kubeconfig,
            "wait",
            "--for=condition=Established",
            "--timeout=300s",
            *files,
            cache_dir=Path(cache),
            timeout=330,
        )


# ---------------------------------------------------------------------------------- CLI


@contextlib.contextmanager
def _interrupt_on_signals() -> Iterator[None]:
    """Raise KeyboardInterrupt on SIGINT and SIGTERM, so `with` blocks clean up.

    SIGINT is set too because a shell starts background jobs with it ignored.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Build if needed, start a control plane with the KubeRay CRDs, wait for a signal."""
    parser = argparse.ArgumentParser(
        description="Start a local Kubernetes control plane (etcd, kube-apiserver, "
        "kube-controller-manager) with the KubeRay CRDs, until interrupted."
    )
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with _interrupt_on_signals():
        try:
            binaries = ensure_binaries()
            with ControlPlane(binaries) as control_plane:
                install_kuberay_crds(control_plane.kubeconfig, control_plane.kubectl)
                print(f"KUBECONFIG={control_plane.kubeconfig}", flush=True)
                print(f"KUBECTL={control_plane.kubectl}", flush=True)
                log.info("control plane ready at %s; Ctrl-C stops it", control_plane.server)
                while True:
                    control_plane.check_alive()
                    time.sleep(1)
        except KeyboardInterrupt:
            log.info("stopped")
            return 0
        except ControlPlaneError as error:
            log.error("%s", error)
            return 1


if __name__ == "__main__":
    sys.exit(main())

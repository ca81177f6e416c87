"""``gdfut`` command line: start, stop and inspect a cluster.

    gdfut start --head [--port N] [--bind HOST] [--num-cpus N] [--num-gpus N]
                       [--resources JSON] [--object-store-memory BYTES] [--session-dir D]
        (--session-dir of a session whose head died: restarts that head alone)
    gdfut start --address HOST:PORT [--session-dir D] [--num-cpus N] ...
    gdfut stop [--session-dir D]
    gdfut status [--address HOST:PORT] [--session-dir D] [--json]
    gdfut memory [--address HOST:PORT] [--session-dir D] [--json]

Daemons started here run detached (their own session, stdin from /dev/null,
stderr to a log file); every pid is recorded in ``<session>/pids`` and
``gdfut stop`` stops them by pid. ``head_request`` is also the driver's way to
ask the head a single question before its runtime is up (``api._join``).
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import signal
import sys
import threading
import time

from . import cluster
from . import protocol as P
from .exceptions import AuthenticationError, ClusterConnectionError, GdfutError

STOP_GRACE_S = 5.0
SHM_DIR = "/dev/shm"


class CliError(Exception):
    """A failure reported as one line on stderr (exit code 1)."""


class Unreachable(ClusterConnectionError):
    """The head or node daemon at an address could not be reached."""


class NotTheHead(Unreachable):
    """The address answers as a gdfut node daemon, not as the head."""


# A head request without a reply after this long also asks whether the
# address is a node daemon (nodes ignore head messages, so the request alone
# would only time out).
PROBE_NODE_AFTER_S = 1.0


# ------------------------------------------------------------------ requests
class _ReplyHandler:
    def on_messages(self, conn, messages):
        for m in messages:
            conn.resolve_reply(m)

    def on_closed(self, conn, exc):
        pass


async def _request(addr: tuple, token: bytes, mtype: int, fields: tuple, timeout: float,
                   probe_node: bool = False):
    from .transport import tcp
    host, port = addr[0], int(addr[1])
    what = f"{host}:{port}"
    try:
        conn = await tcp.connect(host, port, _ReplyHandler(), token, timeout=timeout)
    except asyncio.TimeoutError:
        raise Unreachable(f"{what}: no answer within {timeout:g} s") from None
    except tcp.ConnectionLost:
        raise await _closed_by_peer(what, host, port) from None
    except ConnectionRefusedError:
        raise Unreachable(f"{what}: connection refused (nothing listens there; is the cluster "
                          f"running?)") from None
    except OSError as exc:
        raise Unreachable(f"{what}: {exc.strerror or exc}") from None
    try:
        return await _reply_or_probe(conn, what, mtype, fields, timeout, probe_node)
    except asyncio.TimeoutError:
        raise Unreachable(f"{what}: no reply within {timeout:g} s") from None
    except tcp.ConnectionLost:
        raise await _closed_by_peer(what, host, port) from None
    finally:
        conn.close()


async def _reply_or_probe(conn, what: str, mtype: int, fields: tuple, timeout: float,
                          probe_node: bool):
    """The reply to a request; with ``probe_node`` (a head request) that gets
    none at once, NotTheHead when the address turns out to be a node daemon's."""
    reply = asyncio.ensure_future(conn.request(mtype, *fields))
    if not probe_node or timeout <= PROBE_NODE_AFTER_S:
        return await asyncio.wait_for(reply, timeout)
    done, _ = await asyncio.wait({reply}, timeout=PROBE_NODE_AFTER_S)
    if done:
        return reply.result()
    probe = asyncio.ensure_future(conn.request(P.NODE_STATUS))
    try:
        done, _ = await asyncio.wait({reply, probe}, timeout=timeout - PROBE_NODE_AFTER_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if reply in done:
            return reply.result()
        if probe in done and isinstance(probe.result(), dict) and "node_id" in probe.result():
            node_id = probe.result()["node_id"]
            node = node_id.hex() if isinstance(node_id, bytes) else node_id
            raise NotTheHead(f"{what} is a gdfut node daemon (node {node}), not the head: give "
                             f"the head's address (`gdfut start --head` printed it; "
                             f"`gdfut status` shows it)")
        raise asyncio.TimeoutError
    finally:
        for fut in (reply, probe):
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()          # retrieved: no "never retrieved" warning


async def _closed_by_peer(what: str, host: str, port: int) -> Exception:
    """The daemon closed the connection before answering. If it still accepts
    connections it is alive and refused us: the token is not its cluster's."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (OSError, asyncio.TimeoutError):
        return Unreachable(f"{what}: connection closed (the daemon stopped?)")
    writer.close()
    return AuthenticationError(f"authentication failed at {what}: it closed the connection "
                               f"after the token handshake, so this cluster token is not its "
                               f"cluster's")


def _run(coro):
    """asyncio.run, also from a thread whose event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}

    def target():
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as exc:   # re-raised in the caller
            box["error"] = exc
    t = threading.Thread(target=target, name="gdfut-cli-request", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def request(addr: tuple, token: bytes, mtype: int, *fields, timeout: float = 10):
    """One request/reply with any daemon (head or node) on a fresh connection.

    Raises ``Unreachable`` when it cannot connect or gets no reply,
    ``AuthenticationError`` when the daemon refuses the token, and
    ``transport.tcp.RemoteError`` when the daemon answers with an error.
    """
    return _run(_request(tuple(addr), token, mtype, fields, timeout))


def _head_request(addr: tuple, token: bytes, mtype: int, fields: tuple, timeout: float):
    return _run(_request(tuple(addr), token, mtype, fields, timeout, probe_node=True))


def head_request(head_addr: tuple, token: bytes, mtype: int, *fields, timeout: float = 10):
    """Ask the head one question (``HEAD_*`` message types) and return its reply."""
    try:
        return _head_request(head_addr, token, mtype, fields, timeout)
    except NotTheHead:
        raise
    except Unreachable as exc:
        raise Unreachable(f"cannot reach the gdfut head at {exc}") from None


# ------------------------------------------------------------------ sessions
def _latest_session() -> str:
    return os.path.realpath(os.path.join(cluster.DEFAULT_ROOT, "session_latest"))


def _session_dir(arg: str | None) -> str:
    path = os.path.realpath(arg) if arg else _latest_session()
    if not os.path.isfile(os.path.join(path, "token")):
        if arg:
            raise CliError(f"{arg} is not a gdfut session directory (it has no token file)")
        raise CliError(f"no gdfut session found ({os.path.join(cluster.DEFAULT_ROOT, 'session_latest')} "
                       f"does not exist); start one with `gdfut start --head` or pass --session-dir")
    return path


def _token(session_dir: str) -> bytes:
    try:
        with open(os.path.join(session_dir, "token"), "rb") as f:
            return f.read()
    except OSError as exc:
        raise CliError(f"cannot read the cluster token in {session_dir}: {exc.strerror}") from None


def _parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"bad address {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _head_addr(args) -> tuple[str, int]:
    if getattr(args, "address", None):
        return _parse_address(args.address)
    session = args.session_dir
    try:
        with open(os.path.join(session, "address")) as f:
            return _parse_address(f.read().strip())
    except OSError:
        pass
    from .node import read_head_addr
    addr = read_head_addr(session)
    if addr is None:
        raise CliError(f"session {session} has no head address; pass --address HOST:PORT")
    return _connect_host(addr[0]), addr[1]


def _connect_host(bind: str) -> str:
    return "127.0.0.1" if bind in ("", "0.0.0.0") else ("::1" if bind == "::" else bind)


def _advertised_host(bind: str) -> str:
    """Address other machines use to reach a listener bound to ``bind``."""
    if bind not in ("", "0.0.0.0", "::"):
        return bind
    import socket
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))    # picks the outgoing interface; sends nothing
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


# ------------------------------------------------------------------ start
def _resources(text: str | None) -> dict:
    if not text:
        return {}
    try:
        res = json.loads(text)
    except ValueError as exc:
        raise CliError(f"--resources is not valid JSON: {exc}") from None
    if not isinstance(res, dict) or not all(isinstance(v, (int, float)) for v in res.values()):
        raise CliError('--resources must be a JSON object of numbers, e.g. \'{"accel": 2}\'')
    return res


def _err_log_tail(session_dir: str, kind: str, lines: int = 15) -> str:
    logs = sorted(glob.glob(os.path.join(session_dir, "logs", f"{kind}-*.err")),
                  key=os.path.getmtime)
    if not logs:
        return ""
    try:
        with open(logs[-1], errors="replace") as f:
            tail = f.read().splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join("    " + line for line in tail)


def _wait_ready(daemon, session_dir: str) -> dict:
    try:
        info = daemon.wait_ready()
    except (RuntimeError, ValueError) as exc:
        tail = _err_log_tail(session_dir, daemon.kind)
        if daemon.popen.poll() is None:           # timed out (or printed garbage): give up on it
            daemon.stop()
        raise CliError(f"{exc}" + (f"\n  last lines of its stderr:\n{tail}" if tail else "")) \
            from None
    if daemon.popen.stdout is not None:
        # The daemon prints nothing after its ready line; close our end so it holds no
        # reference to this short-lived process.
        daemon.popen.stdout.close()
    return info


def _gpus(node_info: dict, declared) -> str:
    if declared is not None:
        return _num(declared)
    count = (node_info.get("resources") or {}).get("GPU", 0)
    if count:
        return _num(count) + " (found by NVML)"
    return "0 (" + ("NVML found no GPU" if _nvml_available() else "NVML not available") + ")"


def _nvml_available() -> bool:
    """Whether NVML loads here (the node counted GPUs with it on this host)."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:   # no package, or no driver library
        return False
    try:
        pynvml.nvmlShutdown()
    except Exception:
        pass
    return True


def _spawn_node(args, session_dir, head_addr) -> tuple:
    store = args.object_store_memory or cluster.default_object_store_memory()
    cpus = args.num_cpus if args.num_cpus is not None else (os.cpu_count() or 1)
    # num_gpus None: the node counts real GPUs with NVML (0 without a driver)
    node = cluster.spawn_node(session_dir, head_addr, cpus, args.num_gpus,
                              _resources(args.resources), store, bind=args.bind, detach=True,
                              transport=args.transport, spill_dir=args.spill_dir,
                              device_store_memory=args.device_store_memory)
    info = _wait_ready(node, session_dir)
    cluster.record_pid(session_dir, "node", node.popen.pid)
    return node, info, cpus, store


def cmd_start(args) -> int:
    if args.num_cpus is not None and args.num_cpus < 0:
        raise CliError("--num-cpus must be >= 0")
    if args.num_gpus is not None and args.num_gpus < 0:
        raise CliError("--num-gpus must be >= 0")
    _resources(args.resources)            # validate before starting anything
    if args.head == bool(args.address):
        raise CliError("give exactly one of --head (start a new cluster) or "
                       "--address HOST:PORT (join one)")
    _check_tiers(args)
    if args.head:
        return _start_head(args)
    return _start_worker_node(args)


def _check_tiers(args) -> None:
    """The store options, checked (and the spill directory made) before any
    daemon starts."""
    from .tier_options import TierOptionError, check_cli_args
    try:
        check_cli_args(args)
    except TierOptionError as exc:
        raise CliError(str(exc)) from None


def _is_restartable_session(path: str | None) -> bool:
    """A session a head ran in before (its state is there to read back)."""
    return bool(path) and os.path.isfile(os.path.join(path, "token")) and \
        os.path.isfile(os.path.join(path, "head.sqlite"))


def _restart_head(args) -> int:
    """``gdfut start --head --session-dir D`` on D where a head ran: start
    the head alone again, on its previous port, to read its state back; the
    node daemons (still running) and drivers reconnect to it."""
    session_dir = os.path.realpath(args.session_dir)
    previous = cluster.read_head_info(session_dir) or {}
    if isinstance(previous.get("pid"), int) and cluster.pid_alive(previous["pid"]) \
            and _belongs(previous["pid"], session_dir):
        raise CliError(f"a head already runs in session {session_dir} (pid "
                       f"{previous['pid']}); stop it first, or give a new --session-dir")
    # the same port, so that nodes and drivers (who know only that address) find it;
    # if it is taken the head fails to start and says so
    port = args.port or int(previous.get("port") or 0)
    head = cluster.spawn_head(session_dir, port=port, bind=args.bind, detach=True)
    hinfo = _wait_ready(head, session_dir)
    cluster.record_pid(session_dir, "head", head.popen.pid)
    address = f"{_advertised_host(args.bind)}:{hinfo['port']}"
    with open(os.path.join(session_dir, "address"), "w") as f:
        f.write(address + "\n")
    print(f"gdfut head restarted at {address} on its previous state")
    print(f"  session dir: {session_dir}")
    print(f"  head:        pid {hinfo['pid']}")
    print("Nodes still running register again within a few seconds "
          "(`gdfut status` lists them).")
    return 0


def _start_head(args) -> int:
    if _is_restartable_session(args.session_dir):
        return _restart_head(args)
    latest = os.path.join(cluster.DEFAULT_ROOT, "session_latest")
    try:
        previous = os.readlink(latest)
    except OSError:
        previous = None
    try:
        session_dir = cluster.new_session_dir(path=args.session_dir)
    except OSError as exc:
        raise CliError(f"--session-dir: {exc}") from None
    head = cluster.spawn_head(session_dir, port=args.port, bind=args.bind, detach=True)
    try:
        hinfo = _wait_ready(head, session_dir)
        cluster.record_pid(session_dir, "head", head.popen.pid)
        address = f"{_advertised_host(args.bind)}:{hinfo['port']}"
        local_head = (_connect_host(args.bind), hinfo["port"])
        _, ninfo, cpus, store = _spawn_node(args, session_dir, local_head)
    except BaseException:
        head.stop()
        _restore_latest(latest, session_dir, previous)
        raise
    with open(os.path.join(session_dir, "address"), "w") as f:
        f.write(address + "\n")
    print(f"gdfut head started at {address}")
    print(f"  session dir: {session_dir}")
    print(f"  logs:        {os.path.join(session_dir, 'logs')}")
    print(f"  head:        pid {hinfo['pid']}")
    print(f"  node:        {ninfo['node_id'][:16]} pid {ninfo['pid']} "
          f"(CPU {_num(cpus)}, GPU {_gpus(ninfo, args.num_gpus)}, store {_bytes(store)})")
    print()
    print("Connect from Python:")
    print("    import gdfut")
    print(f'    gdfut.init(address="{address}")')
    print('    # the token is read from the latest session; if another session started since:')
    print(f'    # gdfut.init(address="{address}", session_dir="{session_dir}")')
    print("Add a node on this machine:")
    print(f"    gdfut start --address {address} --session-dir {session_dir}")
    print("Inspect:")
    print(f"    gdfut status --session-dir {session_dir}")
    print("Stop:")
    print(f"    gdfut stop --session-dir {session_dir}")
    return 0


def _restore_latest(latest: str, failed: str, previous: str | None) -> None:
    """A failed start must not leave ``session_latest`` pointing at a dead session."""
    try:
        if os.readlink(latest) != failed:
            return                      # someone else started a session meanwhile
        os.unlink(latest)
        if previous:
            os.symlink(previous, latest)
    except OSError:
        pass


NODE_REGISTER_TIMEOUT_S = 30.0


def _wait_registered(head_addr, token, node, ninfo) -> None:
    """Until the head lists the new node as alive: once `gdfut start
    --address` returns, every driver's tasks can be placed there."""
    node_id = bytes.fromhex(ninfo["node_id"])
    deadline = time.monotonic() + NODE_REGISTER_TIMEOUT_S
    while time.monotonic() < deadline:
        nodes = head_request(head_addr, token, P.HEAD_LIST_NODES)
        if any(n.get("node_id") == node_id and n.get("state") == "ALIVE" for n in nodes):
            return
        if node.popen.poll() is not None:
            raise CliError(f"node {ninfo['node_id'][:16]} exited with {node.popen.returncode} "
                           f"before registering with the head")
        time.sleep(0.05)
    raise CliError(f"node {ninfo['node_id'][:16]} started but did not register with the head "
                   f"at {head_addr[0]}:{head_addr[1]} within {NODE_REGISTER_TIMEOUT_S:.0f} s")


def _start_worker_node(args) -> int:
    head_addr = _parse_address(args.address)
    session_dir = _session_dir(args.session_dir)
    token = _token(session_dir)
    head_request(head_addr, token, P.HEAD_STATUS)      # fail early, before spawning anything
    node, ninfo, cpus, store = _spawn_node(args, session_dir, head_addr)
    _wait_registered(head_addr, token, node, ninfo)
    print(f"gdfut node {ninfo['node_id'][:16]} started (pid {ninfo['pid']}), "
          f"joining the head at {head_addr[0]}:{head_addr[1]}")
    print(f"  resources:   CPU {_num(cpus)}, GPU {_gpus(ninfo, args.num_gpus)}, store {_bytes(store)}")
    print(f"  session dir: {session_dir}")
    print(f"  logs:        {os.path.join(session_dir, 'logs')}")
    print(f"Stop the whole cluster: gdfut stop --session-dir {session_dir}")
    return 0


# ------------------------------------------------------------------ stop
def _read_pids(session_dir: str) -> list[tuple[str, int]]:
    out = []
    try:
        with open(os.path.join(session_dir, "pids")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    out.append((parts[0], int(parts[1])))
    except FileNotFoundError:
        pass
    return out


def _cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except FileNotFoundError:
        return []               # gone (or no /proc entry for it)
    except OSError:
        return None             # unreadable: the caller trusts the pid file


def _belongs(pid: int, session_dir: str) -> bool:
    """Is ``pid`` a gdfut process of this session (guards against reused pids)?"""
    if not os.path.isdir("/proc"):
        return True
    cmd = _cmdline(pid)
    if cmd is None:
        return True
    return session_dir in cmd or os.path.basename(session_dir) in " ".join(cmd)


_DAEMON_MODULES = ("gdfut.head", "gdfut.node", "gdfut.worker_main")


def _session_processes(session_dir: str) -> list[tuple[str, int]]:
    """Every gdfut daemon or worker started with ``--session-dir <session_dir>``
    (not other commands naming the session, such as this one under a wrapper)."""
    found = []
    if not os.path.isdir("/proc"):
        return found
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        cmd = _cmdline(int(entry)) or []
        for i, a in enumerate(cmd[:-1]):
            if a == "--session-dir" and os.path.realpath(cmd[i + 1]) == session_dir:
                mod = next((cmd[j + 1] for j in range(len(cmd) - 1) if cmd[j] == "-m"), "")
                if mod not in _DAEMON_MODULES:
                    break       # e.g. `timeout 60 gdfut stop --session-dir D` itself
                kind = mod.rsplit(".", 1)[-1].replace("worker_main", "worker")
                found.append((kind, int(entry)))
                break
    return found


def _terminate(procs: list[tuple[str, int]], grace: float) -> list[tuple[str, int, str]]:
    """SIGTERM, wait up to ``grace`` seconds, SIGKILL; returns (kind, pid, how)."""
    sent = []
    for kind, pid in procs:
        try:
            os.kill(pid, signal.SIGTERM)
            sent.append((kind, pid))
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(cluster.pid_alive(pid) for _, pid in sent):
        time.sleep(0.05)
    out = []
    for kind, pid in sent:
        if cluster.pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out.append((kind, pid, "SIGKILL"))
        else:
            out.append((kind, pid, "SIGTERM"))
    kill_deadline = time.monotonic() + 2.0
    while time.monotonic() < kill_deadline and any(cluster.pid_alive(pid) for _, pid, _ in out):
        time.sleep(0.02)
    return out


def cmd_stop(args) -> int:
    session_dir = _session_dir(args.session_dir)
    if not os.path.exists(os.path.join(session_dir, "pids")):
        # An embedded session (gdfut.init() with no address) belongs to its driver, which
        # stops it on exit; never sweep another program's cluster.
        raise CliError(f"session {session_dir} was not started by `gdfut start` (it has no "
                       f"pids file); its driver stops it")
    recorded = [(k, p) for k, p in _read_pids(session_dir) if cluster.pid_alive(p)]
    stale = [(k, p) for k, p in recorded if not _belongs(p, session_dir) and cluster.pid_alive(p)]
    recorded = [kp for kp in recorded if kp not in stale]
    for kind, pid in stale:
        print(f"not stopping pid {pid} (recorded as {kind}): it is no longer a process of "
              f"this session")
    # Node daemons first (each stops its workers and unlinks its shared memory), then the head.
    nodes = [kp for kp in recorded if kp[0] != "head"]
    heads = [kp for kp in recorded if kp[0] == "head"]
    stopped = _terminate(nodes, STOP_GRACE_S) + _terminate(heads, STOP_GRACE_S)
    # Anything of this session still running (workers of a killed node, unrecorded daemons).
    leftovers = [kp for kp in _session_processes(session_dir) if cluster.pid_alive(kp[1])]
    swept = _terminate(leftovers, 1.0) if leftovers else []
    for kind, pid, how in stopped:
        note = "" if how == "SIGTERM" else f" (did not exit within {STOP_GRACE_S:g} s; killed)"
        print(f"stopped {kind} pid {pid}{note}")
    for kind, pid, how in swept:
        print(f"stopped leftover {kind} pid {pid} ({how})")
    still = [(k, p) for k, p, _ in stopped + swept if cluster.pid_alive(p)]
    shm = sorted(glob.glob(os.path.join(SHM_DIR, f"gdfut-{os.path.basename(session_dir)}-*")))
    for path in shm:
        try:
            os.unlink(path)
            print(f"removed leftover shared memory {path}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            print(f"could not remove {path}: {exc.strerror}", file=sys.stderr)
    from .devstore.disk_store import remove_dead_node_dirs
    for path in remove_dead_node_dirs(os.path.join(session_dir, "spill")):
        print(f"removed leftover spill directory {path}")
    if not stopped and not swept:
        print(f"no gdfut process of session {session_dir} was running")
    with open(os.path.join(session_dir, "pids"), "w") as f:
        for kind, pid in still:
            f.write(f"{kind} {pid}\n")
    if still:
        raise CliError("still running after SIGKILL: " +
                       ", ".join(f"{k} pid {p}" for k, p in still))
    print(f"logs kept in {os.path.join(session_dir, 'logs')}")
    return 0


# ------------------------------------------------------------------ formatting
def _num(v) -> str:
    if v is None:
        return "-"
    f = float(v)
    return str(int(f)) if f == int(f) else f"{f:g}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _bytes(n) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _hex(v, n: int = 8) -> str:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v[:n]).hex()
    if isinstance(v, str):
        return v[:2 * n]
    return "-" if v is None else str(v)


def _oid(oid) -> str:
    """Short object id: task id prefix and return index (``put`` for put objects)."""
    if isinstance(oid, (bytes, bytearray)) and len(oid) == 20:
        from .ids import PUT_INDEX, return_index
        idx = return_index(bytes(oid))
        return f"{oid[:8].hex()}:{'put' if idx == PUT_INDEX else idx}"
    return _hex(oid)


def _current_tier(loc, oid, tier_at: dict):
    """A ``[node, tier]`` location with the tier that node reports now."""
    if isinstance(loc, (list, tuple)) and len(loc) == 2 and isinstance(loc[0], bytes):
        tier = tier_at.get((bytes(loc[0]), bytes(oid or b"")))
        if tier:
            return [loc[0], tier]
    return loc


def _location(loc) -> str:
    if isinstance(loc, (list, tuple)) and loc:
        return ":".join(_hex(x) for x in loc)
    if isinstance(loc, (bytes, bytearray)):
        return _hex(loc)
    return str(loc)


def _jsonable(v):
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, dict):
        return {str(_jsonable(k)): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; plain aligned columns otherwise."""
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            t = Table(title=title, title_justify="left")
            for c in columns:
                t.add_column(c, overflow="fold")
            for r in rows:
                t.add_row(*r)
            Console().print(t)
            return
    print(title)
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print("  " + fmt.format(*columns).rstrip())
    for r in rows:
        print("  " + fmt.format(*r).rstrip())


def _res_cell(stats: dict, key: str) -> str:
    total = (stats.get("resources_total") or {}).get(key)
    if total is None:
        return "-"
    return f"{_num(_in_use(stats, key))}/{_num(total)}"


def _in_use(stats: dict, key: str) -> float:
    """total - available; a resource missing from ``resources_available`` has 0 left."""
    total = (stats.get("resources_total") or {}).get(key, 0)
    if "resources_available" not in stats:
        return 0
    return total - (stats["resources_available"] or {}).get(key, 0)


# ------------------------------------------------------------------ status
def _connect_args(args) -> tuple[tuple[str, int], bytes]:
    if args.address:
        _parse_address(args.address)     # a bad address is reported before a missing session
    args.session_dir = _session_dir(args.session_dir)
    return _head_addr(args), _token(args.session_dir)


def cmd_status(args) -> int:
    head_addr, token = _connect_args(args)
    st = head_request(head_addr, token, P.HEAD_STATUS)
    if args.json:
        print(json.dumps(_jsonable({**st, "address": f"{head_addr[0]}:{head_addr[1]}"}),
                         indent=2))
        return 0
    session = st.get("session_dir") or args.session_dir
    nodes = st.get("nodes", [])
    alive = [n for n in nodes if n.get("state") == "ALIVE"]
    print(f"gdfut cluster at {head_addr[0]}:{head_addr[1]}")
    print(f"  session dir: {session}")
    print(f"  logs:        {os.path.join(session, 'logs')}")
    print(f"  nodes:       {len(alive)} alive, {len(nodes) - len(alive)} dead")
    print(f"  jobs:        {st.get('jobs', 0)}   named actors: {st.get('named_actors', 0)}")
    totals: dict = {}
    for n in alive:
        s = n.get("stats") or {}
        for k, v in (s.get("resources_total") or {}).items():
            used = _in_use(s, k)
            t = totals.setdefault(k, [0.0, 0.0])
            t[0] += used
            t[1] += v
    if totals:
        print("  resources:   " + ", ".join(f"{k} {_num(u)}/{_num(t)}"
                                             for k, (u, t) in sorted(totals.items())))
    print()
    rows = []
    for n in sorted(nodes, key=lambda n: (n.get("state") != "ALIVE", str(n.get("addr")))):
        s = n.get("stats") or {}
        store = s.get("store") or {}
        extra = sorted(set(s.get("resources_total") or {}) - {"CPU", "GPU"})
        addr = n.get("addr")
        rows.append([
            _hex(n.get("node_id")),
            f"{addr[0]}:{addr[1]}" if isinstance(addr, (list, tuple)) else str(addr),
            str(n.get("state", "?")),
            _res_cell(s, "CPU"),
            _res_cell(s, "GPU"),
            ", ".join(f"{k} {_res_cell(s, k)}" for k in extra) or "-",
            str(store.get("num_objects", "-")),
            (f"{_bytes(store.get('used_bytes'))}/{_bytes(store.get('capacity'))}"
             if store else "-"),
            _device_cell(s.get("tiers")),
            _disk_cell(s.get("tiers")),
            str(s.get("workers", "-")),
            str(n.get("pid", "-")),
        ])
    _table("Nodes (resources in use/total)",
           ["NODE", "ADDRESS", "STATE", "CPU", "GPU", "OTHER", "OBJECTS", "STORE",
            "DEVICE (moved to host)", "DISK (spilled/restored)", "WORKERS", "PID"], rows)
    return 0


def _device_cell(tiers) -> str:
    """Bytes in the device tier (all GPUs of the node) of its budget, and
    the bytes moved down to host so far."""
    if not tiers or not tiers.get("device_capacity"):
        return "-"
    return (f"{_bytes(tiers.get('device_bytes'))}/{_bytes(tiers.get('device_capacity'))} "
            f"({_bytes(tiers.get('moved_down_bytes'))})")


def _disk_cell(tiers) -> str:
    """Bytes on the disk tier, and the spilled/restored totals of a node."""
    if not tiers:
        return "-"
    return (f"{_bytes(tiers.get('disk_bytes'))} "
            f"({_bytes(tiers.get('spilled_bytes'))}/{_bytes(tiers.get('restored_bytes'))})")


# ------------------------------------------------------------------ memory
def _memory_listing(head_addr, token, timeout: float):
    nodes = head_request(head_addr, token, P.HEAD_LIST_NODES, timeout=timeout)
    listing = []
    for n in nodes:
        if n.get("state") != "ALIVE":
            continue
        addr = tuple(n["addr"])
        addr = (_connect_host(addr[0]), addr[1])
        try:
            reply = request(addr, token, P.NODE_MEMORY, timeout=timeout)
        except Unreachable as exc:
            print(f"warning: no object listing from node {_hex(n.get('node_id'))} "
                  f"({exc}); its objects are missing below", file=sys.stderr)
            continue
        listing.append((n, reply))
    return listing


def cmd_memory(args) -> int:
    head_addr, token = _connect_args(args)
    listing = _memory_listing(head_addr, token, args.timeout)
    if args.json:
        print(json.dumps(_jsonable([{"node": n, **r} for n, r in listing]), indent=2))
        return 0
    rows = []
    total = 0
    all_rows = [(n, row) for n, reply in listing for row in reply.get("owners") or []]
    # where each node's store says a copy is now (an owner records "host")
    tier_at = {(bytes(reply.get("node_id") or b""), bytes(o["object_id"])): o.get("tier")
               for _, reply in listing for o in reply.get("store") or []}
    all_rows.sort(key=lambda nr: (bytes(nr[1].get("oid") or b""), not nr[1].get("owned", True)))
    for node, r in all_rows:
        owned = r.get("owned", True)
        mode = r.get("owner_mode", "?")
        owner = (f"{_hex(r.get('owner'))} {mode}" if owned
                 else f"{_hex(r.get('owner'))} (borrowed by {mode})")
        size = r.get("size")
        if owned and size:
            total += size
        refs = [f"{k}={r[k]}" for k in ("local", "submitted", "borrowed", "nested", "contains")
                if r.get(k)]
        rows.append([
            _oid(r.get("oid")), owner, _bytes(size) if size is not None else "-",
            str(r.get("state", "?")),
            ", ".join(_location(_current_tier(x, r.get("oid"), tier_at))
                      for x in r.get("locations") or []) or "-",
            " ".join(refs) or "none", str(r.get("call_site") or "-"),
        ])
    _table(f"Objects ({_plural(len(rows), 'reference')})",
           ["OBJECT", "OWNER", "SIZE", "STATE", "LOCATIONS", "REFERENCES", "CALL SITE"], rows)
    print()
    store_rows = []
    for n, reply in listing:
        store = reply.get("store") or []
        host = [o for o in store if o.get("tier", "host") == "host"]
        disk = [o for o in store if o.get("tier") == "disk"]
        device = [o for o in store if o.get("tier") == "device"]
        used = sum(o.get("size") or 0 for o in host)
        pinned = sum(1 for o in host if o.get("pins"))
        cap = ((n.get("stats") or {}).get("store") or {}).get("capacity")
        tiers = reply.get("tiers") or {}
        store_rows.append([_hex(n.get("node_id")), str(len(device)),
                           (f"{_bytes(tiers.get('device_bytes'))}/"
                            f"{_bytes(tiers.get('device_capacity'))}"
                            if tiers.get("device_capacity") else "-"),
                           str(len(host)), str(pinned),
                           f"{_bytes(used)}/{_bytes(cap)}", str(len(disk)),
                           _bytes(sum(o.get("size") or 0 for o in disk)),
                           f"{_bytes(tiers.get('spilled_bytes'))}/"
                           f"{_bytes(tiers.get('restored_bytes'))}"])
    _table("Stores by tier", ["NODE", "DEVICE OBJECTS", "DEVICE USED", "HOST OBJECTS",
                              "PINNED", "HOST USED", "DISK OBJECTS",
                              "DISK USED", "SPILLED/RESTORED"], store_rows)
    print(f"\n{_plural(len(rows), 'reference')}, {_bytes(total)} in owned objects of known size")
    return 0


# ------------------------------------------------------------------ main
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gdfut", description="gdfut cluster command line")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    st = sub.add_parser("start", help="start a head (--head) or a node joining a head (--address)")
    st.add_argument("--head", action="store_true", help="start a new cluster: head + one node")
    st.add_argument("--address", help="HOST:PORT of the head to join")
    st.add_argument("--port", type=int, default=0, help="head port (default: any free port)")
    st.add_argument("--bind", default="127.0.0.1",
                    help="interface the daemons listen on (default 127.0.0.1; 0.0.0.0 for all)")
    st.add_argument("--num-cpus", type=float, default=None)
    st.add_argument("--num-gpus", type=float, default=None,
                    help="GPUs to declare; without a GPU: emulated ones (default: NVML count)")
    st.add_argument("--transport", choices=("tcp", "ucx"), default=None,
                    help="node-to-node data plane (default: $GDFUT_TRANSPORT or tcp)")
    st.add_argument("--resources", default=None, help='custom resources, JSON: \'{"accel": 2}\'')
    st.add_argument("--object-store-memory", type=int, default=None, metavar="BYTES")
    st.add_argument("--spill-dir", default=None, metavar="DIR",
                    help="where objects that do not fit in the store are spilled "
                         "(default: spill/ in the session directory)")
    st.add_argument("--device-store-memory", type=int, default=None, metavar="BYTES",
                    help="device tier bytes per GPU, where GPU tasks' results stay (default: "
                         "half of each GPU's memory; emulated GPUs: 1 GiB or half the store)")
    st.add_argument("--session-dir", default=None,
                    help="with --head: a new (or empty) directory for the session (default: "
                         "a new one under the sessions root), or the directory of a session "
                         "whose head stopped: the head alone starts again on its saved state "
                         "and port; with --address: the session directory of the head "
                         "(default: latest)")
    st.set_defaults(func=cmd_start)

    sp = sub.add_parser("stop", help="stop every process of a session")
    sp.add_argument("--session-dir", default=None, help="default: the latest session")
    sp.set_defaults(func=cmd_stop)

    for name, func, text in (("status", cmd_status, "nodes, resources and stores"),
                             ("memory", cmd_memory, "live objects of every owner")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--address", default=None, help="HOST:PORT of the head")
        p.add_argument("--session-dir", default=None, help="default: the latest session")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
        p.set_defaults(func=func)

    bp = sub.add_parser("bench", help="benchmarks: `gdfut bench sort --help`")
    bp.add_argument("benchmark", choices=("sort",), help="sort: the shuffle sort benchmark")
    bp.add_argument("bench_args", nargs=argparse.REMAINDER,
                    help="its flags (python -m gdfut.shuffle.sort --help)")
    bp.set_defaults(func=cmd_bench)
    return ap


def cmd_bench(args) -> int:
    """`gdfut bench sort ...` is `python -m gdfut.shuffle.sort ...`."""
    from .shuffle import sort
    return sort.main(args.bench_args)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if not hasattr(args, "timeout"):
        args.timeout = 10.0
    from .transport.tcp import RemoteError
    try:
        return args.func(args)
    except CliError as exc:
        print(f"gdfut {args.command}: error: {exc}", file=sys.stderr)
    except (GdfutError, RemoteError) as exc:   # Unreachable, AuthenticationError...
        print(f"gdfut {args.command}: error: {exc}", file=sys.stderr)
    except BrokenPipeError:        # `gdfut status | head`: the reader went away
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"gdfut {args.command}: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""Checks of the store options a user gives: ``object_store_memory``,
``device_store_memory`` and ``spill_dir`` (``gdfut.init``, ``gdfut start``,
the sort benchmark, and the node daemon itself).

A bad value is named with its problem before any daemon starts: otherwise
the node fails to start with its reason in a log file, or starts and fails
much later, at the first spill. ``check_*`` are pure (the facts of the
machine are arguments); ``check_store_options`` gathers the facts and calls
them; ``check_spill_dir`` touches the directory (it makes it, as the node's
first spill would, and writes a probe file).
"""
from __future__ import annotations

import math
import operator
import os

SHM_DIR = "/dev/shm"


class TierOptionError(ValueError):
    """A store option's value cannot work (its message names the option)."""


def check_bytes(value, option: str, *, allow_zero: bool = False) -> int | None:
    """``value`` as an int number of bytes (None stays None). Integral floats
    (``8e9``) are taken, as Ray takes them; bools, strings, fractions and
    non-finite numbers are not."""
    if value is None:
        return None
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise TierOptionError(f"{option} must be a number of bytes (an int), got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise TierOptionError(f"{option} must be a whole number of bytes, got {value!r}")
        value = int(value)
    try:
        value = operator.index(value)
    except TypeError:
        raise TierOptionError(f"{option} must be a number of bytes (an int), got "
                              f"{type(value).__name__} {value!r:.80}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise TierOptionError(f"{option} must be {'>= 0' if allow_zero else '> 0'} bytes, "
                              f"got {value}")
    return value


def check_host_store(nbytes: int, option: str, shm_free: int, memory_total: int) -> None:
    """The host tier is a file in /dev/shm that the node maps whole: one
    bigger than the free space there would kill the node with SIGBUS when
    written (Ray refuses it too), one bigger than the machine's memory
    cannot be backed at all."""
    if memory_total and nbytes > memory_total:
        raise TierOptionError(f"{option}={nbytes} bytes is more than this machine's memory "
                              f"({memory_total} bytes); give at most about 30% of it (what "
                              f"the default takes); what does not fit spills to disk")
    if nbytes > shm_free:
        raise TierOptionError(f"{option}={nbytes} bytes does not fit in {SHM_DIR} "
                              f"({shm_free} bytes free): give less, or make {SHM_DIR} bigger "
                              f"(docker: --shm-size); what does not fit spills to disk")


def check_device_store(nbytes: int | None, option: str, num_gpus, *, memory_total: int,
                       emulated: bool, gpu_memory_per_gpu: int = 0,
                       gpus_option: str = "num_gpus") -> None:
    """``num_gpus`` None: the node counts GPUs itself (a budget given for a
    machine that turns out to have none is unused, so a script stays
    portable); an explicit 0 with a budget is a contradiction. An emulated
    GPU's tier is host memory: all of them together must fit in it. A real
    GPU's must fit in that GPU (where its size is known)."""
    if nbytes is None or nbytes == 0:
        return
    if num_gpus is not None and num_gpus == 0:
        raise TierOptionError(f"{option}={nbytes} is a device tier per GPU, but "
                              f"{gpus_option}=0: drop {option} or declare GPUs")
    gpus = math.ceil(num_gpus or 0)
    if emulated and gpus and memory_total and nbytes * gpus > memory_total:
        raise TierOptionError(f"{option}={nbytes} bytes per emulated GPU x {gpus} GPU(s) is "
                              f"more than this machine's memory ({memory_total} bytes), which "
                              f"backs emulated GPUs")
    if not emulated and gpu_memory_per_gpu and nbytes > gpu_memory_per_gpu:
        raise TierOptionError(f"{option}={nbytes} bytes is more than the memory of each GPU "
                              f"({gpu_memory_per_gpu} bytes)")


def check_spill_dir(path, option: str) -> str | None:
    """The absolute spill directory (None: the default under the session
    directory), checked as ``check_writable_dir``."""
    if path is None or path == "":
        return None
    return check_writable_dir(path, option)


def check_writable_dir(path, option: str) -> str:
    """``path`` made absolute; made if missing; refused if it is not a
    directory, cannot be made, or a file cannot be written in it."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise TierOptionError(f"{option} must be a path (str), got {type(path).__name__} "
                              f"{path!r:.80}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise TierOptionError(f"{option} {path!r} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".gdfut-probe-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"x")
        os.unlink(probe)
    except OSError as exc:
        raise TierOptionError(f"{option} {path!r} is not a writable directory: "
                              f"{exc.strerror or exc}") from None
    return path


def machine_facts() -> dict:
    """Free bytes of /dev/shm and the machine's memory (0 where unknown)."""
    try:
        st = os.statvfs(SHM_DIR)
        shm_free = st.f_bavail * st.f_frsize
    except OSError:
        shm_free = 0
    try:
        import psutil
        memory_total = int(psutil.virtual_memory().total)
    except Exception:
        memory_total = 0
    return {"shm_free": shm_free, "memory_total": memory_total}


def gpu_facts() -> tuple[bool, int]:
    """(declared GPUs are emulated: CPU mode or no GPU NVML sees, memory of
    each real GPU or 0), as the node will see them (NVML, no cupy import)."""
    from .node import detect_gpus
    from .node_device import cpu_mode
    count, memory = detect_gpus()
    if cpu_mode() or not count:
        return True, 0
    return False, memory // count


def check_store_options(object_store_memory=None, device_store_memory=None, spill_dir=None,
                        num_gpus=None, *, names=None) -> dict:
    """All three options checked and normalised: ``object_store_memory``
    (int or None), ``device_store_memory`` (int or None), ``spill_dir``
    (absolute path or None). ``names``: how the caller spells each option
    (``--spill-dir`` on a command line)."""
    names = {"object_store_memory": "object_store_memory",
             "device_store_memory": "device_store_memory", "spill_dir": "spill_dir",
             "num_gpus": "num_gpus", **(names or {})}
    host = check_bytes(object_store_memory, names["object_store_memory"])
    device = check_bytes(device_store_memory, names["device_store_memory"], allow_zero=True)
    facts = machine_facts()
    if host is not None and facts["shm_free"]:
        check_host_store(host, names["object_store_memory"], facts["shm_free"],
                         facts["memory_total"])
    if device:
        emulated, per_gpu = gpu_facts()
        check_device_store(device, names["device_store_memory"], num_gpus,
                           memory_total=facts["memory_total"], emulated=emulated,
                           gpu_memory_per_gpu=per_gpu, gpus_option=names["num_gpus"])
    return {"object_store_memory": host, "device_store_memory": device,
            "spill_dir": check_spill_dir(spill_dir, names["spill_dir"])}


CLI_NAMES = {"object_store_memory": "--object-store-memory",
             "device_store_memory": "--device-store-memory",
             "spill_dir": "--spill-dir", "num_gpus": "--num-gpus"}


def check_cli_args(args) -> None:
    """The store options of a command line (``gdfut start``, ``python -m
    gdfut.node``), named by their flags; the spill directory is made and
    ``args.spill_dir`` set to its absolute path. Raises TierOptionError."""
    tiers = check_store_options(args.object_store_memory, args.device_store_memory,
                                args.spill_dir, args.num_gpus, names=CLI_NAMES)
    args.spill_dir = tiers["spill_dir"]

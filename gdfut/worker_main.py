"""Worker process entry point: ``python -m gdfut.worker_main`` (started by a node)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(prog="gdfut.worker_main")
    ap.add_argument("--node", required=True)
    ap.add_argument("--session-dir", required=True)
    ap.add_argument("--worker-id", required=True)
    ap.add_argument("--head", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Imported after arg parsing so that a bad command line fails fast.
    from . import runtime_context
    from .core_worker import CoreWorker
    from .executor import Executor
    from . import worker_output

    token = open(os.path.join(args.session_dir, "token"), "rb").read()
    host, port = args.node.rsplit(":", 1)
    head = None
    if args.head:
        hh, hp = args.head.rsplit(":", 1)
        head = (hh, int(hp))
    rt = CoreWorker(mode="worker", node_host=host, node_port=int(port), token=token,
                    session_dir=args.session_dir, head_addr=head,
                    worker_id=bytes.fromhex(args.worker_id))
    executor = Executor(rt)
    rt.executor = executor
    worker_output.install(rt)
    runtime_context.set_runtime(rt)
    rt.start(kind="worker")
    # Only now a graceful stop: until registered, SIGTERM's default (exit at
    # once) is right, and a handler could not interrupt a blocked start-up.
    signal.signal(signal.SIGTERM, lambda *_: executor.stop())
    executor.run_forever()
    rt.device.evacuate()        # its device objects move to the host tier first
    rt.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()

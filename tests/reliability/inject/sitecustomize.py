"""Fault injection for the reliability tests (on PYTHONPATH only there).

GANFLOW_TEST_KILL=<file name>:<n>[:partial] SIGKILLs the whole process group (dvc repro and its
stage) at the n-th write of that file: before it starts, or halfway through it with `partial`.
"""

import os

spec = os.environ.get("GANFLOW_TEST_KILL")
if spec:
    import signal
    from pathlib import Path

    import ganflow.io as gio

    name, nth, *mode = spec.split(":")
    original = gio.write_bytes
    seen = {"n": 0}

    def write_bytes(path, data):
        if Path(path).name == name:
            seen["n"] += 1
            if seen["n"] == int(nth):
                if mode == ["partial"]:
                    with gio.atomic_path(path) as tmp:
                        with open(tmp, "wb") as f:
                            f.write(data[: len(data) // 2])
                            f.flush()
                            os.fsync(f.fileno())
                        os.killpg(os.getpgid(0), signal.SIGKILL)
                os.killpg(os.getpgid(0), signal.SIGKILL)
        return original(path, data)

    gio.write_bytes = write_bytes

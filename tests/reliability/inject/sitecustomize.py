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

# GANFLOW_TEST_NAN_AT=<step>: the losses of that training step come out NaN
nan_at = os.environ.get("GANFLOW_TEST_NAN_AT")
if nan_at:
    import ganflow.gan_step as gan_step

    real_advance = gan_step.GanStep.advance

    def advance(self, i, stepper=None):
        out = real_advance(self, i, stepper)
        return out * float("nan") if i + 1 == int(nan_at) else out

    gan_step.GanStep.advance = advance

# GANFLOW_TEST_OFFLINE=1: every download fails as it does without a network
if os.environ.get("GANFLOW_TEST_OFFLINE"):
    import urllib.error

    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    torch.hub.download_url_to_file = offline

# GANFLOW_TEST_WRITE_LOG=<file>: append "<RANK> <path>" for every file ganflow writes
write_log = os.environ.get("GANFLOW_TEST_WRITE_LOG")
if write_log:
    import ganflow.io as gio

    logged = gio.write_bytes

    def write_bytes_logged(path, data):
        with open(write_log, "a") as f:
            f.write(f"{os.environ.get('RANK', '-')} {path}\n")
        return logged(path, data)

    gio.write_bytes = write_bytes_logged

# GANFLOW_TEST_AUDIT=<file>: append every global an unpickler resolves and every os.system call (Python audit
# events), whichever library makes them: a pickle from a cache would show here before it could run
audit = os.environ.get("GANFLOW_TEST_AUDIT")
if audit:
    import sys

    def record(event, args):
        if event in ("pickle.find_class", "os.system"):
            with open(audit, "a") as f:
                f.write(f"{event} {args!r}\n")

    sys.addaudithook(record)

# GANFLOW_TEST_SIGKILL_GROUP_AT=<pgid>:<step>: SIGKILL that process group (a tracking server, say)
# right after that training step
kill_at = os.environ.get("GANFLOW_TEST_SIGKILL_GROUP_AT")
if kill_at:
    import signal

    import ganflow.gan_step as gan_step

    pgid, at_step = (int(v) for v in kill_at.split(":"))
    advance_before_kill = gan_step.GanStep.advance

    def advance_then_kill(self, i, stepper=None):
        out = advance_before_kill(self, i, stepper)
        if i + 1 == at_step:
            os.killpg(pgid, signal.SIGKILL)
        return out

    gan_step.GanStep.advance = advance_then_kill

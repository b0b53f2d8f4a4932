"""The project's language host ends the way the Pulumi CLI ends it: SIGINT to its process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
from pulumi.runtime.proto import language_pb2, language_pb2_grpc


def test_sigint_to_its_group_ends_it_at_once_without_a_traceback() -> None:
    host = subprocess.Popen([sys.executable, "-m", "canary.lab.langhost", "127.0.0.1:1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert host.stdout is not None
        port = int(host.stdout.readline())
        # It serves: the CLI's first call is GetPluginInfo (answered by the SDK's own runtime).
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            language_pb2_grpc.LanguageRuntimeStub(channel).GetPluginInfo(language_pb2.google_dot_protobuf_dot_empty__pb2.Empty(), timeout=10)
        start = time.monotonic()
        os.killpg(host.pid, signal.SIGINT)
        code = host.wait(timeout=10)
        took = time.monotonic() - start
        assert code == 0
        # What matters is ending before the CLI's kill at 5 s; the margin leaves room for two busy cores.
        assert took < 4, f"the host took {took:.1f}s to exit (the CLI kills it after 5 s)"
        assert host.stderr is not None
        err = host.stderr.read()
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        for pipe in (host.stdout, host.stderr):
            if pipe is not None:
                pipe.close()

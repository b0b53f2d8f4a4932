"""A Python language host, so that plain ``pulumi up`` runs ``__main__.py`` of this project.

The Pulumi CLI starts a language host per update to run the program. The Go
host (``pulumi-language-python``) is not among the tools the lab builds from Go
modules, so the lab ships this one (``.lab/bin/pulumi-language-python``, written by ``lab up``):
it serves the SDK's own language runtime — the same code that runs Automation
API inline programs — with ``__main__.py`` of the project as the program. It
supports what ``pulumi up/preview/destroy/refresh`` need (Run, GetPluginInfo,
GetRequiredPlugins/Packages, About); dependency installation is the README's job.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from pulumi.automation._server import LanguageServer
from pulumi.runtime.proto import language_pb2, language_pb2_grpc

_MAX_MESSAGE = 400 * 1024 * 1024


class _Host(LanguageServer):
    def __init__(self, engine_address: str) -> None:
        super().__init__(program=self._program)
        self.engine_address = engine_address
        self.program_dir = Path.cwd()

    def _program(self) -> None:
        sys.path.insert(0, str(self.program_dir))
        runpy.run_path(str(self.program_dir / "__main__.py"), run_name="__main__")

    def Run(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC naming
        program_dir = request.info.program_directory or request.pwd
        if program_dir:
            self.program_dir = Path(program_dir)
            os.chdir(program_dir)
        forwarded = language_pb2.RunRequest()
        forwarded.CopyFrom(request)
        del forwarded.args[:]
        forwarded.args.append(self.engine_address)
        return super().Run(forwarded, context)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    positional = [a for a in args if not a.startswith("-")]
    engine_address = positional[-1] if positional else ""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE)],
    )
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(_Host(engine_address), server)
    port = server.add_insecure_port("127.0.0.1:0")
    # The CLI ends a language host with SIGINT to its process group and kills it 5 s later.
    # Without a handler, the KeyboardInterrupt printed a traceback into the update's output,
    # and the interpreter's exit could then wait on gRPC's worker threads until that kill.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    print(port, flush=True)
    stop.wait()
    server.stop(grace=0.5).wait(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the program has run; gRPC's threads hold nothing to keep


if __name__ == "__main__":
    main()

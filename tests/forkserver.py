"""A warm `tirl` for the tests that run commands as a user would (`conftest.run_cli`, tests/test_docs.py).

Every `python -m tirl.cli` pays for importing torch, transformers, TRL and peft: about 5 s a command on two cores,
more than most documented commands then take on the tiny models. The server imports them once and forks a child per
command; the child takes the command's arguments, working directory, environment and standard streams (passed over
a Unix socket) and runs `tirl.cli.main` exactly as `python -m tirl.cli` would, exit code included. A command whose
environment differs from the one the server started with (a variable that a library may read at import time) is
refused, and the client then runs it in a fresh interpreter, so the shortcut never changes what a command sees.

    python tests/forkserver.py SOCKET          # the server: prints "ready" once it listens
    python tests/forkserver.py --client SOCKET ARGS...   # what the `tirl` stand-in runs
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import traceback

# set by the shell (bash's checkwinsize exports the terminal's COLUMNS and LINES to the commands of a block, so they
# come and go with where the suite runs), by pytest or by the tests (where to find programs and this server): no
# library reads them on import, and the command still gets them; every other difference sends the command to a fresh
# interpreter
SHELL_VARIABLES = {"PWD", "OLDPWD", "SHLVL", "_", "PATH", "COLUMNS", "LINES", "PYTEST_CURRENT_TEST", "TIRL_TEST_SERVER"}
FRESH = -1000  # the server's answer: run this command in a fresh interpreter
PRELOAD = ("tirl.cli.train", "tirl.cli.eval", "tirl.cli.rewards", "tirl.cli.rewards_analyse", "tirl.cli.compare",
           "tirl.jobs.train", "tirl.jobs.eval", "tirl.jobs.analyse", "tirl.trainers", "tirl.rewards", "tirl.evaluation",
           "transformers.models.llama.modeling_llama", "sacrebleu", "rouge_score.rouge_scorer")


def _environment(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in SHELL_VARIABLES}


def serve(path: str) -> None:
    parent = os.getppid()
    started_with = _environment(dict(os.environ))  # imports add variables of their own (torch's inductor cache)
    for name in PRELOAD:
        importlib.import_module(name)
    from tirl.plots import pyplot

    pyplot()
    added = {k: v for k, v in os.environ.items() if k not in started_with and k not in SHELL_VARIABLES}
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    server.listen(4)
    server.settimeout(5)
    print("ready", flush=True)
    while True:  # one command at a time: the documented blocks run their commands one after another
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the test session is gone (killed before it could stop us)
                return
            continue
        conn.setblocking(True)
        with conn:
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(message)
            theirs = _environment(request["env"])
            if theirs != started_with or len(fds) != 3:
                if os.environ.get("TIRL_TEST_SERVER_DEBUG"):
                    print("declined, differing:", sorted(k for k in {*theirs, *started_with}
                                                         if theirs.get(k) != started_with.get(k)),
                          file=sys.stderr, flush=True)
                for fd in fds:
                    os.close(fd)
                conn.send(str(FRESH).encode())
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                server.close()
                _child({**request, "env": {**request["env"], **added}}, fds)
            for fd in fds:
                os.close(fd)
            _, status = os.waitpid(pid, 0)
            conn.send(str(os.waitstatus_to_exitcode(status)).encode())


def _child(request: dict, fds: list[int]) -> None:
    """Become the command: its streams, directory, environment and argv; never returns."""
    code: object = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import tirl.cli

        sys.argv = [str(tirl.cli.__file__).replace("__init__.py", "__main__.py"), *request["args"]]
        try:
            code = tirl.cli.main()
        except SystemExit as e:  # what the interpreter would turn into an exit status
            code = e.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def client(path: str, args: list[str], streams: tuple[int, int, int] = (0, 1, 2), cwd: str | None = None,
           timeout: float | None = None) -> int:
    """Run `tirl ARGS` through the server at `path` with these stdin/stdout/stderr descriptors; its exit code, or
    FRESH when the server declines (or is not there). Raises TimeoutError after `timeout` seconds."""
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(path)
    except OSError:
        return FRESH
    with conn:
        request = {"args": args, "cwd": cwd or os.getcwd(), "env": dict(os.environ)}
        socket.send_fds(conn, [json.dumps(request).encode()], list(streams))
        conn.settimeout(timeout)
        code = int(conn.recv(64).decode())
    return code if code >= 0 or code == FRESH else 128 - code  # killed by a signal: as a shell reports it


if __name__ == "__main__":
    if sys.argv[1] == "--client":
        sys.exit(client(sys.argv[2], sys.argv[3:]))
    serve(sys.argv[1])
